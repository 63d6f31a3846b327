package cnitest

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestAgentOwnedBridge: the agent usually creates the bridge first (plain
// `ip link add type bridge`, gateway address, up). The plugin must use it as
// it is: no second address, no MAC change as pods come and go, nothing
// removed on DEL, and STATUS follows the bridge's state.
func TestAgentOwnedBridge(t *testing.T) {
	n := newNode(t, "10.244.106.0/24", false)
	n.ns.MustRun(t, "ip", "link", "add", "wgmesh-br0", "mtu", "1400", "type", "bridge")
	n.ns.MustRun(t, "ip", "addr", "add", "10.244.106.1/24", "dev", "wgmesh-br0")
	// STATUS: bridge there but down.
	if err := n.status(); err == nil || cniCode(t, err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "is down") {
		t.Errorf("STATUS with the bridge down: %v", err)
	}
	n.ns.MustRun(t, "ip", "link", "set", "wgmesh-br0", "up")
	if err := n.status(); err != nil {
		t.Errorf("STATUS with the agent's bridge up: %v", err)
	}
	mac := func() string {
		out := n.ns.MustRun(t, "ip", "-o", "link", "show", "wgmesh-br0")
		f := strings.Fields(out[strings.Index(out, "link/ether"):])
		return f[1]
	}
	before := mac()

	var pods []*pod
	for _, name := range []string{"a", "b", "c"} {
		p := n.newPod(name)
		n.mustAdd(p)
		pods = append(pods, p)
	}
	if got := mac(); got != before {
		t.Errorf("bridge MAC changed from %s to %s as pods joined", before, got)
	}
	addrs := n.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "wgmesh-br0")
	if strings.Count(addrs, "inet ") != 1 || !strings.Contains(addrs, "10.244.106.1/24") {
		t.Errorf("bridge addresses after ADDs:\n%s", addrs)
	}
	if out := n.ns.MustRun(t, "ip", "-o", "link", "show", "wgmesh-br0"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("bridge: %s", out)
	}
	for _, p := range pods {
		if err := n.del(p); err != nil {
			t.Fatal(err)
		}
	}
	if got := mac(); got != before {
		t.Errorf("bridge MAC changed from %s to %s as pods left", before, got)
	}
	if addrs := n.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "wgmesh-br0"); !strings.Contains(addrs, "10.244.106.1/24") {
		t.Errorf("DEL removed the agent's gateway address:\n%s", addrs)
	}
}
