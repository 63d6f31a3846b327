package integration_test

import (
	"testing"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
)

// The CNI plugin refuses ADD unless the agent's guard table exists; it
// repeats the name instead of importing the agent's data plane, so the two
// must be checked to agree. Needs no root.
func TestGuardTableNameShared(t *testing.T) {
	if cni.GuardTable != dataplane.DefaultGuardTable {
		t.Errorf("cni.GuardTable = %q, dataplane.DefaultGuardTable = %q: the plugin would look for a table the agent never makes",
			cni.GuardTable, dataplane.DefaultGuardTable)
	}
}
