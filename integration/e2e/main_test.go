// Package e2e is wgmesh's end-to-end suite: every test brings up its own lab
// (integration/lab: a real kube-apiserver and etcd, the real agent and CNI
// binaries, network and mount namespaces per node) and removes it again.
// It needs root and fails, never skips, without it.
package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// binDir holds the binaries the labs run, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: integration/e2e needs root (network and mount namespaces); run it with sudo")
		return 1
	}
	var missing []string
	for _, tool := range []string{"ip", "nsenter", "unshare", "mount", "nft", "ping", "tcpdump", "wg", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: integration/e2e needs %s (integration/scripts/deps.sh installs them)\n", strings.Join(missing, ", "))
		return 1
	}
	dir, err := os.MkdirTemp("", "wgmesh-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: build:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// buildBinaries builds the product binaries and the lab CLI into dir, and
// takes kube-apiserver, etcd and kubectl from the tools cache (building them
// on first use, which takes ~10 minutes on 2 cores).
func buildBinaries(dir string) error {
	root, err := repoRoot()
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
	fmt.Fprintf(os.Stderr, "e2e: built wgmesh binaries in %s\n", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	cmd = exec.Command("bash", filepath.Join(root, "integration/tools/build.sh"), dir)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("integration/tools/build.sh: %w", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: control-plane tools ready in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

func repoRoot() (string, error) {
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
