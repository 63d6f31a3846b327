package hardening

import (
	"os"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/reexec"
)

// The test binary re-executes itself inside `ip netns exec` so that every
// thread of a node's process lives in the node's namespaces (see reexec).
const rolePrefix = "WGMESH_HARDENING"

func TestMain(m *testing.M) {
	reexec.Dispatch(rolePrefix, reexec.Roles{"node": runNodeRole})
	os.Exit(m.Run())
}

// childEnv is the environment that makes the test binary run role with cfg.
func childEnv(role string, cfg any) ([]string, error) {
	return reexec.Env(rolePrefix, role, cfg)
}
