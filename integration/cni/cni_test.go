package cnitest

import (
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/integration/internal/cninode"
)

// TestPodLifecycle walks two pods through everything a runtime does:
// STATUS before the node is ready, ADD, connectivity, CHECK, DEL, GC.
func TestPodLifecycle(t *testing.T) {
	n := newNode(t, "10.244.101.0/24", false)
	gw := netip.MustParseAddr("10.244.101.1")
	hostVeth := func(p *pod) string { return cni.HostVethName(p.id, "eth0") }

	// STATUS: the agent has not made the bridge yet.
	n.removeBridge()
	err := n.status()
	if err == nil || cniCode(t, err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "wgmesh-br0 does not exist") {
		t.Fatalf("STATUS before the agent's bridge: %v, want code 50", err)
	}
	n.addBridge()
	// STATUS with a config that has no podCIDRs yet.
	noCIDR, err := libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.1.0","name":"wgmesh","plugins":[{"type":"wgmesh","podCIDRs":[],"dataDir":"` + n.dataDir + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.cni.GetStatusNetworkList(ctx(t), noCIDR); err == nil || cniCode(t, err) != 50 || !strings.Contains(err.Error(), "no podCIDR yet") {
		t.Errorf("STATUS without podCIDRs: %v", err)
	}

	p1, p2 := n.newPod("p1"), n.newPod("p2")
	r1, r2 := n.mustAdd(p1), n.mustAdd(p2)
	a1, a2 := podAddr(t, r1), podAddr(t, r2)
	if a1 != netip.MustParseAddr("10.244.101.2") || a2 != netip.MustParseAddr("10.244.101.3") {
		t.Errorf("addresses %s, %s; want .2 and .3", a1, a2)
	}
	// The result, per spec: bridge, host veth, pod interface in its sandbox;
	// the address points at the pod interface and names the gateway.
	if len(r1.Interfaces) != 3 || r1.Interfaces[0].Name != "wgmesh-br0" || r1.Interfaces[1].Name != hostVeth(p1) ||
		r1.Interfaces[2].Name != "eth0" || r1.Interfaces[2].Sandbox != p1.path() || r1.Interfaces[2].Mac == "" {
		t.Errorf("interfaces %v", r1.Interfaces)
	}
	if ip := r1.IPs[0]; ip.Interface == nil || *ip.Interface != 2 || !ip.Gateway.Equal(gw.AsSlice()) || ip.Address.String() != "10.244.101.2/24" {
		t.Errorf("ips %v", r1.IPs)
	}
	if len(r1.Routes) != 1 || r1.Routes[0].Dst.String() != "0.0.0.0/0" || !r1.Routes[0].GW.Equal(gw.AsSlice()) {
		t.Errorf("routes %v", r1.Routes)
	}

	// What the kernel says.
	if out := p1.ns.MustRun(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "state UP") {
		t.Errorf("pod eth0: %s", out)
	}
	if out := p1.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(out, "10.244.101.2/24") {
		t.Errorf("pod address: %s", out)
	}
	if out := p1.ns.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(out, "default via 10.244.101.1 dev eth0") {
		t.Errorf("pod default route: %s", out)
	}
	if out := n.ns.MustRun(t, "ip", "-4", "-o", "addr", "show", "wgmesh-br0"); !strings.Contains(out, "10.244.101.1/24") {
		t.Errorf("bridge address: %s", out)
	}
	if out := n.ns.MustRun(t, "ip", "-d", "link", "show", hostVeth(p1)); !strings.Contains(out, "master wgmesh-br0") || !strings.Contains(out, "hairpin on") {
		t.Errorf("host veth: %s", out)
	}
	if out := n.ns.MustRun(t, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("node ip_forward = %q", out)
	}

	// pod <-> pod and pod <-> gateway.
	ping(t, p1.ns, a2)
	ping(t, p2.ns, a1)
	ping(t, p1.ns, gw)
	ping(t, n.ns, a1)
	ping(t, n.ns, a2)

	if err := n.status(); err != nil {
		t.Errorf("STATUS with a bridge: %v", err)
	}
	for _, p := range []*pod{p1, p2} {
		if err := n.check(p); err != nil {
			t.Errorf("CHECK %s: %v", p.id, err)
		}
	}
	// CHECK notices a pod that lost its address.
	p2.ns.MustRun(t, "ip", "addr", "del", "10.244.101.3/24", "dev", "eth0")
	if err := n.check(p2); err == nil || !strings.Contains(err.Error(), "lacks address 10.244.101.3/24") {
		t.Errorf("CHECK of a broken pod: %v", err)
	}

	// DEL p2: address freed, veth gone; DEL again is fine.
	if err := n.del(p2); err != nil {
		t.Fatal(err)
	}
	if err := n.del(p2); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if recs := n.records(); len(recs) != 1 || recs[0].Owner.ContainerID != p1.id {
		t.Errorf("records after DEL: %v", recs)
	}
	if slices.Contains(n.links(), hostVeth(p2)) {
		t.Error("p2's host veth survived DEL")
	}
	if out, _ := p2.ns.Run("ip", "link", "show", "eth0"); !strings.Contains(out, "does not exist") {
		t.Errorf("p2 eth0 survived DEL: %s", out)
	}

	// GC. p3 is ADDed through a runtime that then forgets it (another
	// libcni cache), so libcni's own GC cannot DEL it: only the plugin's GC
	// can free its address and remove its veth.
	p3 := n.newPod("p3")
	forgetful := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), cninode.NewExec(n.handle))
	if _, err := forgetful.AddNetworkList(ctx(t), n.list, n.rt(p3)); err != nil {
		t.Fatal(err)
	}
	if len(n.records()) != 2 || !slices.Contains(n.links(), hostVeth(p3)) {
		t.Fatalf("p3 not attached: %v", n.records())
	}
	if err := n.cni.GCNetworkList(ctx(t), n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: p1.id, IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if recs := n.records(); len(recs) != 1 || recs[0].Owner.ContainerID != p1.id {
		t.Errorf("records after GC: %v", recs)
	}
	if slices.Contains(n.links(), hostVeth(p3)) {
		t.Error("GC left p3's host veth")
	}
	if !slices.Contains(n.links(), hostVeth(p1)) {
		t.Error("GC removed the valid p1's host veth")
	}
	ping(t, p1.ns, gw) // p1 unharmed

	if err := n.del(p1); err != nil {
		t.Fatal(err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("store not empty: %v", recs)
	}
}

// TestFailedAddLeavesNothing: an ADD that fails, before or after the
// address is reserved, leaves no address and no link behind.
func TestFailedAddLeavesNothing(t *testing.T) {
	n := newNode(t, "10.244.102.0/24", false)

	// The namespace is gone before the ADD.
	gone := &pod{id: n.prefix + "-gone", ns: nil}
	rt := &libcni.RuntimeConf{ContainerID: gone.id, NetNS: "/run/netns/" + n.prefix + "-gone", IfName: "eth0"}
	_, err := n.cni.AddNetworkList(ctx(t), n.list, rt)
	if err == nil || cniCode(t, err) != types.ErrUnknownContainer || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("ADD into a missing netns: %v, want code 3", err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("missing netns left %v", recs)
	}

	// The pod already has eth0: fails after the address was reserved and
	// must give it back (and create no veth).
	p := n.newPod("busy")
	p.ns.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer") // no dummy module on every kernel
	_, err = n.add(p)
	if err == nil || !strings.Contains(err.Error(), "interface eth0 already exists") {
		t.Errorf("ADD with eth0 present: %v", err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("failed ADD left %v", recs)
	}
	for _, l := range n.links() {
		if cni.IsHostVethName(l) {
			t.Errorf("failed ADD left host veth %s", l)
		}
	}

	// A bad config is a clean error too.
	bad, err := libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.1.0","name":"wgmesh","plugins":[{"type":"wgmesh","mtu":"big","podCIDRs":["10.244.102.0/24"],"dataDir":"` + n.dataDir + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	ok := n.newPod("ok")
	_, err = n.cni.AddNetworkList(ctx(t), bad, n.rt(ok))
	if err == nil || cniCode(t, err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), `field "mtu" must be a number`) {
		t.Errorf("ADD with bad config: %v", err)
	}

	// And after all that the node still works.
	r := n.mustAdd(ok)
	if podAddr(t, r) != netip.MustParseAddr("10.244.102.3") {
		// .2 went to the busy pod and was released; round-robin moves on.
		t.Errorf("got %s, want 10.244.102.3", podAddr(t, r))
	}
	ping(t, ok.ns, netip.MustParseAddr("10.244.102.1"))
	if err := n.del(ok); err != nil {
		t.Fatal(err)
	}
}

// TestDelAfterNetnsGone: the runtime often deletes the sandbox before the
// DEL (or the node rebooted). DEL must still succeed and free the address,
// also when the netns path is left behind as a plain file.
func TestDelAfterNetnsGone(t *testing.T) {
	n := newNode(t, "10.244.107.0/24", false)
	for _, leaveFile := range []bool{false, true} {
		name := n.prefix + "-gone"
		if leaveFile {
			name += "f"
		}
		path := "/run/netns/" + name
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v: %s", err, out)
		}
		t.Cleanup(func() {
			// Only what this test made: the namespace if still there, the file otherwise.
			if _, err := os.Stat(path); err == nil {
				if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
					os.Remove(path)
					t.Logf("cleanup %s: %v: %s", name, err, out)
				}
			}
		})
		p := &pod{id: n.prefix + "-" + name}
		rt := &libcni.RuntimeConf{ContainerID: p.id, NetNS: path, IfName: "eth0"}
		if _, err := n.cni.AddNetworkList(ctx(t), n.list, rt); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v: %s", err, out)
		}
		if leaveFile {
			if err := os.WriteFile(path, nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.cni.DelNetworkList(ctx(t), n.list, rt); err != nil {
			t.Errorf("DEL after the netns is gone (file left: %v): %v", leaveFile, err)
		}
		if recs := n.records(); len(recs) != 0 {
			t.Errorf("address not freed: %v", recs)
		}
		for _, l := range n.links() {
			if cni.IsHostVethName(l) {
				t.Errorf("veth %s left", l)
			}
		}
	}
}

// TestAddAfterCrashedAdd: an ADD killed halfway leaves the attachment's
// host veth (and maybe its address) behind; the runtime's retry must
// succeed, reuse the address and replace the leftover.
func TestAddAfterCrashedAdd(t *testing.T) {
	n := newNode(t, "10.244.108.0/24", false)
	p := n.newPod("retry")
	leftover := cni.HostVethName(p.id, "eth0")
	n.ns.MustRun(t, "ip", "link", "add", leftover, "type", "veth", "peer", "name", n.prefix+"-lp")
	n.mustAdd(p)
	if slices.Contains(n.links(), n.prefix+"-lp") {
		t.Error("leftover veth pair was not replaced")
	}
	ping(t, p.ns, netip.MustParseAddr("10.244.108.1"))
	if err := n.del(p); err != nil {
		t.Fatal(err)
	}
	// Same again with the address still reserved from the crashed try
	// (ADD whose process died before its rollback): same address back.
	forgetful := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), cninode.NewExec(n.handle))
	res, err := forgetful.AddNetworkList(ctx(t), n.list, n.rt(p))
	if err != nil {
		t.Fatal(err)
	}
	crashed, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	p.ns.MustRun(t, "ip", "link", "del", "eth0") // the pod side vanishes, the reservation stays
	second, err := n.add(p)
	if err != nil {
		t.Fatal(err)
	}
	if podAddr(t, second) != podAddr(t, crashed) {
		t.Errorf("retry got %s, the crashed ADD held %s", podAddr(t, second), podAddr(t, crashed))
	}
	if recs := n.records(); len(recs) != 1 {
		t.Errorf("records after retry: %v", recs)
	}
	if err := n.del(p); err != nil {
		t.Fatal(err)
	}
	if recs := n.records(); len(recs) != 0 {
		t.Errorf("records %v", recs)
	}
}
