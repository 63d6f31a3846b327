package cnitest

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/wgmesh/wgmesh/cni"
)

// TestAddRefusedWithoutGuard is a node after a reboot, before the agent's
// first start: the conflist is on disk, the guard table and the bridge are
// not. ADD must fail with "try again later" and create nothing (no bridge,
// which would route the pod out in plaintext; no veth; no address); STATUS
// reports the plugin unavailable. Once the agent is back the runtime's retry
// succeeds, and DEL works with or without the guard.
func TestAddRefusedWithoutGuard(t *testing.T) {
	n := newNode(t, "10.244.109.0/24", false)
	n.removeGuard()
	n.removeBridge()
	p := n.newPod("noguard")

	_, err := n.add(p)
	if err == nil {
		t.Fatal("ADD succeeded without the fail-closed guard")
	}
	if c := cniCode(t, err); c != types.ErrTryAgainLater || !strings.Contains(err.Error(), "has not installed its fail-closed guard (nftables table inet "+cni.GuardTable+")") {
		t.Errorf("ADD without guard: code %d %v, want code 11 naming the guard", c, err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("addresses reserved: %v", recs)
	}
	for _, l := range n.links() {
		if cni.IsHostVethName(l) || l == cni.DefaultBridge {
			t.Errorf("node link %s created", l)
		}
	}
	if out := p.ns.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
		t.Errorf("pod interface created: %s", out)
	}
	if err := n.status(); err == nil || cniCode(t, err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "fail-closed guard") {
		t.Errorf("STATUS without guard: %v, want code 50 naming the guard", err)
	}
	// DEL of the failed attachment (runtimes clean up after a failed ADD).
	if err := n.del(p); err != nil {
		t.Errorf("DEL after refused ADD: %v", err)
	}

	n.agentStart()
	r := n.mustAdd(p)
	if a := podAddr(t, r); a != netip.MustParseAddr("10.244.109.2") {
		t.Errorf("address after retry %s, want 10.244.109.2", a)
	}
	if err := n.status(); err != nil {
		t.Errorf("STATUS with guard and bridge: %v", err)
	}
	ping(t, p.ns, netip.MustParseAddr("10.244.109.1"))

	// A reboot with the pod still known to the runtime: DEL must not care.
	n.removeGuard()
	if err := n.del(p); err != nil {
		t.Errorf("DEL without guard: %v", err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("address not freed: %v", recs)
	}
	if slices.ContainsFunc(n.links(), cni.IsHostVethName) {
		t.Errorf("veth left: %v", n.links())
	}
}
