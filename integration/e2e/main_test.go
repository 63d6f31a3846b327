// Package e2e is wgmesh's end-to-end suite: every test brings up its own lab
// (integration/lab: a real kube-apiserver and etcd, the real agent and CNI
// binaries, network and mount namespaces per node) and removes it again.
// It needs root and fails, never skips, without it.
package e2e

import (
	"os"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/labbin"
	"github.com/wgmesh/wgmesh/integration/internal/labtest"
)

// binDir holds the binaries the labs run, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(labtest.Main(m, "e2e", []string{"ip", "nsenter", "unshare", "mount", "nft", "ping", "tcpdump", "wg", "iperf3"}, &binDir))
}

func repoRoot() (string, error) { return labbin.RepoRoot() }
