package cnitest

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/wgmesh/wgmesh/cni"
)

// TestAgentOwnedBridge: the agent's data plane owns the bridge (creates it
// with a fixed MAC, gives it the gateway, brings it up). The plugin must use
// it as it is: no second address, no MAC change as pods come and go,
// nothing removed on DEL, and STATUS follows the bridge's state.
func TestAgentOwnedBridge(t *testing.T) {
	n := newNode(t, "10.244.106.0/24", false)
	// STATUS: bridge there but down.
	n.ns.MustRun(t, "ip", "link", "set", "wgmesh-br0", "down")
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

// TestAddWaitsForAgentBridge: the plugin never makes or mends the bridge.
// While it is missing, down or without this podCIDR's gateway, ADD fails
// with "try again later" (code 11) and leaves nothing behind: no bridge, no
// veth, no address, nothing in the pod. Once the agent's data plane has
// made the bridge, the runtime's retry succeeds.
func TestAddWaitsForAgentBridge(t *testing.T) {
	n := newNode(t, "10.244.110.0/24", false)
	p := n.newPod("wait")
	refused := func(state, want string) {
		t.Helper()
		_, err := n.add(p)
		if err == nil {
			t.Fatalf("ADD succeeded with the bridge %s", state)
		}
		if c := cniCode(t, err); c != types.ErrTryAgainLater || !strings.Contains(err.Error(), "has not set up bridge "+cni.DefaultBridge) || !strings.Contains(err.Error(), want) {
			t.Errorf("ADD with the bridge %s: code %d %v, want code 11 naming the bridge and %q", state, c, err, want)
		}
		if recs := n.records(); len(recs) != 0 {
			t.Errorf("bridge %s: addresses reserved: %v", state, recs)
		}
		if slices.ContainsFunc(n.links(), cni.IsHostVethName) {
			t.Errorf("bridge %s: veth created: %v", state, n.links())
		}
		if out := p.ns.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
			t.Errorf("bridge %s: pod interface created: %s", state, out)
		}
		if err := n.del(p); err != nil { // runtimes clean up after a failed ADD
			t.Errorf("bridge %s: DEL after refused ADD: %v", state, err)
		}
	}

	n.removeBridge()
	refused("missing", "does not exist")
	if slices.Contains(n.links(), cni.DefaultBridge) {
		t.Errorf("ADD created the bridge")
	}

	n.addBridge()
	n.ns.MustRun(t, "ip", "link", "set", cni.DefaultBridge, "down")
	refused("down", "is down")
	if out := n.ns.MustRun(t, "ip", "-o", "link", "show", cni.DefaultBridge); strings.Contains(out, ",UP") {
		t.Errorf("ADD brought the bridge up: %s", out)
	}

	n.ns.MustRun(t, "ip", "link", "set", cni.DefaultBridge, "up")
	n.ns.MustRun(t, "ip", "addr", "del", "10.244.110.1/24", "dev", cni.DefaultBridge)
	refused("without its gateway", "lacks gateway address 10.244.110.1/24")
	if out := n.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", cni.DefaultBridge); strings.Contains(out, "10.244.110.1") {
		t.Errorf("ADD added the gateway: %s", out)
	}

	n.addBridge() // the agent's next pass
	r := n.mustAdd(p)
	if a := podAddr(t, r); a != netip.MustParseAddr("10.244.110.2") {
		t.Errorf("address after retry %s, want 10.244.110.2", a)
	}
	ping(t, p.ns, netip.MustParseAddr("10.244.110.1"))
}
