// Package labbin builds what a lab runs (integration/lab): the product
// binaries and the lab CLI from this module, and kube-apiserver, etcd,
// kubectl and the node stack from the tools cache. The lab suites (e2e,
// soak) call it once from TestMain.
package labbin

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Build builds the product binaries and the lab CLI into dir, and takes
// the kube tools from the tools cache (building them on first use, which
// takes ~10 minutes on 2 cores). Progress goes to w, its own lines
// prefixed with label.
func Build(dir, label string, w io.Writer) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/wgmesh-agent", "./cmd/wgmesh-cni", "./cmd/wgmesh-lab",
		// The kubelet mode's wgmesh image holds these too (deploy/image-binaries.txt).
		"./cmd/wgmeshctl", "./deploy/install-cni")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	fmt.Fprintf(w, "%s: built wgmesh binaries in %s\n", label, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	cmd = exec.Command("bash", filepath.Join(root, "integration/tools/build.sh"), dir)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("integration/tools/build.sh: %w", err)
	}
	fmt.Fprintf(w, "%s: control-plane tools ready in %s\n", label, time.Since(start).Round(time.Millisecond))
	return nil
}

// RepoRoot is the directory of the wgmesh module's go.mod.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := string(bytes.TrimSpace(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the wgmesh module")
	}
	return filepath.Dir(mod), nil
}
