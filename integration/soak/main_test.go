package soak

import (
	"os"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
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
	os.Exit(labtest.Main(m, "soak", []string{"ip", "tc", "nsenter", "unshare", "mount", "nft", "ping", "tcpdump", "wg", "curl", "iptables-legacy"}, &binDir))
}
