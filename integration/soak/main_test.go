//go:build soak

package soak

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/labbin"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/reexec"
)

// The checked TCP stream's ends run as this test binary re-executed inside
// pods; init dispatches before TestMain (which builds and checks for root).
const rolePrefix = "WGMESH_SOAK"

func init() {
	reexec.Dispatch(rolePrefix, reexec.Roles{"tcpsink": netnstest.RunSink, "tcpsource": netnstest.RunSource})
}

// binDir holds the binaries the lab runs, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: integration/soak needs root (network and mount namespaces); run it with sudo")
		return 1
	}
	var missing []string
	for _, tool := range []string{"ip", "tc", "nsenter", "unshare", "mount", "nft", "ping", "tcpdump", "wg", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: integration/soak needs %s (integration/scripts/deps.sh installs them)\n", strings.Join(missing, ", "))
		return 1
	}
	dir, err := os.MkdirTemp("", "wgmesh-soak-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := labbin.Build(dir, "soak", os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: build:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}
