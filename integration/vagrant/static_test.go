// Package vagrant holds the multi-VM suite (run.sh, `make vagrant-test`),
// which needs VMs and cannot run in CI. These tests are what CI can prove
// about it: the scripts and the Vagrantfile are valid, and the image archive
// the suite loads into the VMs is a well-formed image with the layout the
// manifests expect.
package vagrant

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestStaticChecks runs check-static.sh: shellcheck, ruby -c and vagrant
// validate. A missing tool fails the test (the script exits non-zero).
func TestStaticChecks(t *testing.T) {
	out, err := exec.Command("./check-static.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("check-static.sh: %v\n%s", err, out)
	}
	for _, want := range []string{"shellcheck clean", "syntax OK", "Vagrantfile validated successfully"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("check-static.sh output lacks %q:\n%s", want, out)
		}
	}
}

// imageBinaries reads deploy/image-binaries.txt: the names the image must
// hold (an "optional" entry only once its package exists).
func imageBinaries(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../deploy/image-binaries.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch {
		case len(fields) == 2:
		case len(fields) == 3 && fields[2] == "optional":
			if _, err := os.Stat(filepath.Join("../..", fields[1])); errors.Is(err, os.ErrNotExist) {
				continue
			}
		default:
			t.Fatalf("image-binaries.txt: bad line %q", s.Text())
		}
		names = append(names, fields[0])
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// readTar returns a tar stream's regular files by name, with their modes.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]int64) {
	t.Helper()
	files, modes := map[string][]byte{}, map[string]int64{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, modes
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			t.Fatalf("tar entry %s has type %c, want only regular files", h.Name, h.Typeflag)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], modes[h.Name] = b, h.Mode
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestImageArchive builds the archive the suite imports into each VM's
// containerd and checks it as an image loader would: manifest, config and
// layer digests agree, the tag is wgmesh:dev, the entrypoint is the agent,
// and the layer holds exactly the listed binaries, executable and static
// (the image has no libc).
func TestImageArchive(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	cmd := exec.Command("./build-image.sh", out, "wgmesh:dev")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files, _ := readTar(t, f)

	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest.json = %+v, want one image with one layer", manifest)
	}
	m := manifest[0]
	if !slices.Equal(m.RepoTags, []string{"wgmesh:dev"}) {
		t.Errorf("RepoTags = %v, want [wgmesh:dev] (the manifests' image)", m.RepoTags)
	}
	cfgData, ok := files[m.Config]
	if !ok {
		t.Fatalf("config %s missing from the archive", m.Config)
	}
	if want := sha(cfgData) + ".json"; m.Config != want {
		t.Errorf("config named %s, its digest says %s", m.Config, want)
	}
	var cfg struct {
		Architecture string
		OS           string
		Config       struct {
			Entrypoint []string
			User       string
		}
		RootFS struct {
			Type    string
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(cfgData, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" {
		t.Errorf("config os/arch = %s/%s", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/wgmesh-agent"}) {
		t.Errorf("entrypoint = %v, want [/wgmesh-agent]", cfg.Config.Entrypoint)
	}
	layer, ok := files[m.Layers[0]]
	if !ok {
		t.Fatalf("layer %s missing from the archive", m.Layers[0])
	}
	if want := []string{"sha256:" + sha(layer)}; cfg.RootFS.Type != "layers" || !slices.Equal(cfg.RootFS.DiffIDs, want) {
		t.Errorf("rootfs = %+v, want layers %v", cfg.RootFS, want)
	}

	bins, modes := readTar(t, bytes.NewReader(layer))
	var got []string
	for name := range bins {
		got = append(got, name)
	}
	sort.Strings(got)
	want := imageBinaries(t)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("layer holds %v, want exactly %v", got, want)
	}
	for _, must := range []string{"wgmesh-agent", "wgmesh", "install-cni"} {
		if !slices.Contains(got, must) {
			t.Errorf("image lacks /%s, which deploy/base/daemonset.yaml uses", must)
		}
	}
	for name, data := range bins {
		if modes[name]&0o111 == 0 {
			t.Errorf("/%s is not executable (mode %o)", name, modes[name])
		}
		e, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Errorf("/%s is not an ELF binary: %v", name, err)
			continue
		}
		for _, p := range e.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("/%s is dynamically linked; the image has no libc", name)
			}
		}
	}
}
