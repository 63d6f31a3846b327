package datapath

import (
	"os"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/reexec"
)

// The test binary re-executes itself inside `ip netns exec` so that every
// thread of the child lives in the node's namespaces (see reexec).
const rolePrefix = "WGMESH_DATAPATH"

func TestMain(m *testing.M) {
	reexec.Dispatch(rolePrefix, reexec.Roles{
		"node":      runNodeRole,
		"dataplane": runDataplaneRole,
		// The TCP stream ends, inside pod namespaces.
		"tcpsink":   netnstest.RunSink,
		"tcpsource": netnstest.RunSource,
	})
	os.Exit(m.Run())
}

// childEnv is the environment that makes the test binary run role with cfg.
func childEnv(role string, cfg any) ([]string, error) {
	return reexec.Env(rolePrefix, role, cfg)
}
