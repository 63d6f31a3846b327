// Package e2e is wgmesh's end-to-end suite: every test brings up its own lab
// (integration/lab: a real kube-apiserver and etcd, the real agent and CNI
// binaries, network and mount namespaces per node) and removes it again.
// It needs root and fails, never skips, without it.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/labbin"
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

// buildBinaries builds the product binaries and the lab CLI into dir and
// takes the kube tools from the tools cache (integration/internal/labbin).
func buildBinaries(dir string) error { return labbin.Build(dir, "e2e", os.Stderr) }

func repoRoot() (string, error) { return labbin.RepoRoot() }
