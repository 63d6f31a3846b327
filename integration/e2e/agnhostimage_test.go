package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/lab"
)

// TestAgnhostImageWget runs the lab's agnhost image (unpacked, chrooted, in
// a network namespace of its own) and fetches a page with its wget exactly
// as the upstream Services specs do: `wget -q -O - -T 1 URL` in a `seq`
// loop (test/e2e/network/service.go, verifyServeHostnameServiceUp) and
// `wget -T 5 -qO- URL` (checkReachabilityFromPod). The server is the image's
// own agnhost serve-hostname, so each answer must be the hostname. Debian's
// busybox wget segfaulted on -T; this fails if the image's wget does not
// fetch the page. It also checks that a request the server never answers
// gives up after one try (busybox's behaviour; GNU wget retries 20 times).
func TestAgnhostImageWget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	images, err := lab.BuildImages(ctx, binDir, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	archive, ok := images[lab.AgnhostImage]
	if !ok {
		t.Fatalf("no %s among the lab's images %v", lab.AgnhostImage, images)
	}
	root := t.TempDir()
	if err := unpackImage(archive, root); err != nil {
		t.Fatal(err)
	}
	// A container runtime gives the container /dev; the chroot needs at
	// least /dev/null (dash's background jobs read it). Device 1:3 in the
	// kernel's old encoding (major<<8 | minor).
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(filepath.Join(root, "dev", "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Fatal(err)
	}

	// Port 9376 is serve-hostname's; 9377 is a listener that never answers
	// (nc accepts and reads), so wget's 1-second read timeout fires.
	// The servers' and the waiting loop's output goes to /scratch (shown
	// if the server never answers).
	script := `set -e
ip link set lo up
/agnhost serve-hostname --port 9376 >>/scratch 2>&1 &
nc -l 127.0.0.1 9377 >>/scratch 2>&1 &
i=0
until wget -q -O - -T 1 http://127.0.0.1:9376 >>/scratch 2>&1; do
  i=$((i+1)); [ $i -lt 100 ] || { echo "serve-hostname never answered" >&2; cat /scratch >&2; exit 1; }
  sleep 0.1
done
echo "HOSTNAME $(hostname)"
for i in $(seq 1 3); do echo "LOOP $(wget -q -O - -T 1 http://127.0.0.1:9376 2>&1 || true)"; done
echo "QO $(wget -T 5 -qO- "http://127.0.0.1:9376")"
start=$(date +%s)
wget -q -O - -T 1 http://127.0.0.1:9377 >>/scratch 2>&1 && echo "SILENT answered" || echo "SILENT rc=$?"
echo "SILENT seconds=$(( $(date +%s) - start ))"
`
	// A PID namespace of its own: the shell is its init, so when it exits
	// the kernel kills the background servers too. Without it they were
	// reparented to the host's init and outlived the test, holding the
	// descriptors it inherited (the test lock's among them).
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--uts", "--pid", "--fork", "--kill-child", "chroot", root, "/bin/sh", "-c", "hostname agnhost-image-test; "+script)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("in the image:\n%s", out)
	if err != nil {
		t.Fatalf("script in the agnhost image: %v", err)
	}
	got := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		got[k] = append(got[k], v)
	}
	const host = "agnhost-image-test"
	if h := got["HOSTNAME"]; len(h) != 1 || h[0] != host {
		t.Fatalf("hostname in the image: %q, want %q", h, host)
	}
	if len(got["LOOP"]) != 3 {
		t.Errorf("the spec's wget loop gave %d lines, want 3", len(got["LOOP"]))
	}
	for _, l := range append(got["LOOP"], got["QO"]...) {
		if l != host {
			t.Errorf("wget answer %q, want the page %q (serve-hostname's hostname)", l, host)
		}
	}
	if len(got["QO"]) != 1 {
		t.Errorf("wget -T 5 -qO- gave %d lines, want 1", len(got["QO"]))
	}
	if s := got["SILENT"]; len(s) != 2 || s[0] == "answered" || s[0] == "rc=0" {
		t.Errorf("wget against a silent listener: %q, want a failure", s)
	} else {
		// One try with -T 1 ends after about a second; 20 tries (GNU
		// wget's default) take 20 s or more. 10 s leaves room for a loaded
		// box and still fails on retries.
		secs, err := strconv.Atoi(strings.TrimPrefix(s[1], "seconds="))
		if err != nil || secs > 10 {
			t.Errorf("wget -T 1 against a silent listener took %q: want one try (/etc/wgetrc tries = 1)", s[1])
		}
	}
}

// unpackImage writes the single-layer image of a `docker save` archive
// (what ocibuild writes) into root.
func unpackImage(archive, root string) error {
	files, err := readTarFiles(archive)
	if err != nil {
		return err
	}
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		return fmt.Errorf("%s: manifest.json: %w", archive, err)
	}
	if len(manifest) != 1 || len(manifest[0].Layers) == 0 {
		return fmt.Errorf("%s: want one image with layers, manifest %+v", archive, manifest)
	}
	for _, name := range manifest[0].Layers {
		layer, ok := files[name]
		if !ok {
			return fmt.Errorf("%s: layer %s missing", archive, name)
		}
		var r io.Reader = bytes.NewReader(layer)
		if bytes.HasPrefix(layer, []byte{0x1f, 0x8b}) {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return fmt.Errorf("layer %s: %w", name, err)
			}
			r = zr
		}
		if err := untar(r, root); err != nil {
			return fmt.Errorf("layer %s: %w", name, err)
		}
	}
	return nil
}

func readTarFiles(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, h.Name, err)
		}
		files[h.Name] = b
	}
}

func untar(r io.Reader, root string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		dst := filepath.Join(root, filepath.Clean("/"+h.Name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, os.FileMode(h.Mode)&os.ModePerm); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected tar entry type %q", h.Name, h.Typeflag)
		}
	}
}
