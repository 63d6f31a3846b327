package cniclients

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/integration/internal/cninode"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/ipam"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// report is client/'s output (its Report type).
type report struct {
	Libcni      string          `json:"libcni"`
	ListVersion string          `json:"listVersion"`
	Supported   []string        `json:"supported"`
	Result      json.RawMessage `json:"result"`
	Error       *struct {
		Code    uint   `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	} `json:"error"`
}

func (r *report) err() error {
	if r.Error == nil {
		return nil
	}
	return fmt.Errorf("code %d: %s (%s)", r.Error.Code, r.Error.Msg, r.Error.Details)
}

// node is a network namespace playing a Kubernetes node, with the agent's
// conflist in confDir and the plugin's address store in dataDir.
type node struct {
	t        *testing.T
	client   *libcniClient
	prefix   string
	ns       *netnstest.NS
	confDir  string
	dataDir  string
	cacheDir string
	podCIDRs []netip.Prefix
}

// newNode makes the node namespace with what the agent's start leaves there
// for the plugin, which refuses ADD without either: the guard table (an
// empty table of its name; its rules are integration/datapath's business)
// and the pod bridge, made by the agent's own code (dataplane.EnsureBridge
// run in the node namespace; the agent's data plane is the bridge's only
// owner). It writes the conflist the way the agent does, with
// cni.WriteConflist.
func newNode(t *testing.T, c *libcniClient, podCIDRs ...string) *node {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "nft", "nsenter")
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	n := &node{t: t, client: c, prefix: netnstest.Prefix(t), confDir: t.TempDir(), dataDir: t.TempDir(), cacheDir: t.TempDir()}
	for _, p := range podCIDRs {
		n.podCIDRs = append(n.podCIDRs, netip.MustParsePrefix(p))
	}
	n.ns = netnstest.NewNS(t, n.prefix+"-node")
	n.addGuard()
	n.addBridge(1400)
	// What cmd/wgmesh-agent passes (bridge and MTU from its flags and the
	// WireGuard device), with the store in the test's temp dir.
	if _, err := cni.WriteConflist(n.confDir, cni.NodeConf{MTU: 1400, PodCIDRs: n.podCIDRs, DataDir: n.dataDir}); err != nil {
		t.Fatal(err)
	}
	return n
}

// addBridge runs the agent's bridge code in the node namespace; the bridge
// goes with the namespace.
func (n *node) addBridge(mtu int) {
	n.t.Helper()
	dp, err := dataplane.New(dataplane.Config{WGInterface: nodenet.Interface})
	if err != nil {
		n.t.Fatal(err)
	}
	h, err := ns.GetNS("/run/netns/" + n.ns.Name)
	if err != nil {
		n.t.Fatal(err)
	}
	defer h.Close()
	if err := h.Do(func(ns.NetNS) error { return dp.EnsureBridge(n.podCIDRs, mtu) }); err != nil {
		n.t.Fatalf("the agent's bridge: %v", err)
	}
}

func (n *node) addGuard()    { n.ns.MustRun(n.t, "nft", "add", "table", "inet", cni.GuardTable) }
func (n *node) removeGuard() { n.ns.MustRun(n.t, "nft", "delete", "table", "inet", cni.GuardTable) }

// pod is a pod network namespace.
type pod struct {
	id string
	ns *netnstest.NS
}

func (p *pod) path() string { return "/run/netns/" + p.ns.Name }

func (n *node) newPod(name string) *pod {
	return &pod{id: n.prefix + "-" + name, ns: netnstest.NewNS(n.t, n.prefix+"-"+name)}
}

// run runs the client inside the node namespace (nsenter --net, which
// unlike ip netns exec leaves /sys alone), so the plugins it forks run
// there as on a real node. cacheDir is libcni's cache; p may be nil; verb
// is the verb with any flags of its own in front.
func (n *node) run(cacheDir string, p *pod, verb ...string) *report {
	n.t.Helper()
	args := []string{"--net=/run/netns/" + n.ns.Name, "--", n.client.bin,
		"-conf-dir", n.confDir, "-bin-dir", binDir, "-cache-dir", cacheDir}
	if p != nil {
		args = append(args, "-id", p.id, "-netns", p.path(), "-ifname", "eth0")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append(args, verb...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		n.t.Fatalf("%s %v: %v\nstdout: %s\nstderr: %s", n.client.name, verb, err, &stdout, &stderr)
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		n.t.Fatalf("%s %v: unreadable report %q: %v (stderr: %s)", n.client.name, verb, &stdout, err, &stderr)
	}
	// Every run must have been this libcni, running the network at the
	// version this libcni picks from the agent's conflist.
	if r.Libcni != n.client.libcni || r.ListVersion != n.client.listVersion {
		n.t.Fatalf("%s %v: client linked libcni %s and ran the network at %q; want %s at %s",
			n.client.name, verb, r.Libcni, r.ListVersion, n.client.libcni, n.client.listVersion)
	}
	return &r
}

// mustOK fails unless the verb succeeded.
func (n *node) mustOK(cacheDir string, p *pod, verb ...string) *report {
	n.t.Helper()
	r := n.run(cacheDir, p, verb...)
	if err := r.err(); err != nil {
		n.t.Fatalf("%s %v: %v", n.client.name, verb, err)
	}
	return r
}

// records reads the plugin's address store, by owner.
func (n *node) records() map[ipam.Owner][]netip.Addr {
	n.t.Helper()
	list, err := cninode.Allocations(n.dataDir)
	if err != nil {
		n.t.Fatal(err)
	}
	out := map[ipam.Owner][]netip.Addr{}
	for _, a := range list {
		out[a.Owner] = append(out[a.Owner], a.Addr)
	}
	for _, addrs := range out {
		slices.SortFunc(addrs, netip.Addr.Compare)
	}
	return out
}

func owner(p *pod) ipam.Owner { return ipam.Owner{ContainerID: p.id, IfName: "eth0"} }

// hasLink reports whether the node has a link of that name.
func (n *node) hasLink(name string) bool {
	out, err := n.ns.Run("ip", "link", "show", name)
	if err != nil && !strings.Contains(out, "does not exist") {
		n.t.Fatalf("%v: %s", err, out)
	}
	return err == nil
}

// add ADDs p and checks the result as the runtime parsed it: in the
// version libcni runs the network at, one address per podCIDR on the pod's
// eth0, and the same addresses in the kernel and the store.
func (n *node) add(p *pod) []netip.Addr {
	n.t.Helper()
	r := n.mustOK(n.cacheDir, p, "add")
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(r.Result, &v); err != nil {
		n.t.Fatalf("ADD %s: result %s: %v", p.id, r.Result, err)
	}
	if v.CNIVersion != n.client.listVersion {
		n.t.Errorf("ADD %s: result cniVersion %q, want %s", p.id, v.CNIVersion, n.client.listVersion)
	}
	parsed, err := version.NewResult(v.CNIVersion, r.Result)
	if err != nil {
		n.t.Fatalf("ADD %s: result does not parse: %v\n%s", p.id, err, r.Result)
	}
	res, err := current.NewResultFromResult(parsed)
	if err != nil {
		n.t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok || ip.Interface == nil || *ip.Interface >= len(res.Interfaces) {
			n.t.Fatalf("ADD %s: bad IP config %v", p.id, ip)
		}
		a = a.Unmap()
		if itf := res.Interfaces[*ip.Interface]; itf.Name != "eth0" || itf.Sandbox != p.path() {
			n.t.Errorf("ADD %s: address %s on interface %+v, want eth0 in %s", p.id, a, itf, p.path())
		}
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if len(addrs) != len(n.podCIDRs) {
		n.t.Fatalf("ADD %s: addresses %v, want one in each of %v", p.id, addrs, n.podCIDRs)
	}
	for _, a := range addrs {
		if !slices.ContainsFunc(n.podCIDRs, func(c netip.Prefix) bool { return c.Contains(a) }) {
			n.t.Errorf("ADD %s: address %s is in no podCIDR %v", p.id, a, n.podCIDRs)
		}
		if out := p.ns.MustRun(n.t, "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, " "+a.String()+"/") {
			n.t.Errorf("ADD %s: pod eth0 lacks %s:\n%s", p.id, a, out)
		}
	}
	if got := n.records()[owner(p)]; !slices.Equal(got, addrs) {
		n.t.Errorf("ADD %s: store holds %v for it, want %v", p.id, got, addrs)
	}
	if !n.hasLink(cni.HostVethName(p.id, "eth0")) {
		n.t.Errorf("ADD %s: no host veth", p.id)
	}
	return addrs
}

// gone checks that p holds no address and has no interfaces left.
func (n *node) gone(p *pod, after string) {
	n.t.Helper()
	if got, ok := n.records()[owner(p)]; ok {
		n.t.Errorf("after %s: %s still holds %v", after, p.id, got)
	}
	if n.hasLink(cni.HostVethName(p.id, "eth0")) {
		n.t.Errorf("after %s: %s's host veth is still there", after, p.id)
	}
	if out, err := p.ns.Run("ip", "link", "show", "eth0"); err == nil {
		n.t.Errorf("after %s: %s's eth0 is still there: %s", after, p.id, out)
	}
}

// TestRuntimeLibcni drives the conflist the agent writes through each
// libcni as a runtime would: VERSION, ADD (dual-stack), CHECK, STATUS and GC
// where the library has them, DEL and a repeated DEL.
func TestRuntimeLibcni(t *testing.T) {
	for i, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t, c, fmt.Sprintf("10.244.%d.0/24", 121+i), fmt.Sprintf("fd00:10:244:%d::/64", 121+i))

			v := n.mustOK(n.cacheDir, nil, "version")
			if !slices.Contains(v.Supported, c.listVersion) {
				t.Errorf("VERSION %v lacks %s", v.Supported, c.listVersion)
			}

			a := n.newPod("a")
			n.add(a)
			n.mustOK(n.cacheDir, a, "check")

			if c.statusGC {
				statusAndGC(t, n, a)
			} else {
				noStatusGC(t, n)
			}

			n.mustOK(n.cacheDir, a, "del")
			n.gone(a, "DEL")
			n.mustOK(n.cacheDir, a, "del") // DEL is idempotent
			if recs := n.records(); len(recs) != 0 {
				t.Errorf("store not empty at the end: %v", recs)
			}
		})
	}
}

// statusAndGC: STATUS reports ready, and unavailable (50) without the
// agent's guard; GC removes two stale pods, one libcni knows (it DELs it
// from its cache) and one only the plugin's GC can find, and keeps a.
func statusAndGC(t *testing.T, n *node, a *pod) {
	t.Helper()
	n.mustOK(n.cacheDir, nil, "status")
	n.removeGuard()
	if r := n.run(n.cacheDir, nil, "status"); r.Error == nil || r.Error.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without the guard: %v, want code 50", r.err())
	}
	n.addGuard()
	n.mustOK(n.cacheDir, nil, "status")

	stale, forgotten := n.newPod("b"), n.newPod("c")
	n.add(stale)
	// Added through a runtime that then lost it (another libcni cache).
	n.mustOK(t.TempDir(), forgotten, "add")
	if _, ok := n.records()[owner(forgotten)]; !ok {
		t.Fatalf("%s not attached", forgotten.id)
	}
	n.mustOK(n.cacheDir, nil, "-valid", a.id+"/eth0", "gc")
	n.gone(stale, "GC")
	n.gone(forgotten, "GC")
	if _, ok := n.records()[owner(a)]; !ok || !n.hasLink(cni.HostVethName(a.id, "eth0")) {
		t.Errorf("GC took the valid pod %s: records %v", a.id, n.records())
	}
	n.mustOK(n.cacheDir, a, "check")
}

// noStatusGC records what a libcni 1.1 runtime (containerd 1.7) has: no
// STATUS or GC calls at all (client/status.go does not compile against it),
// and the config it would send runs at 1.0.0, where the plugin refuses both
// verbs as the spec says.
func noStatusGC(t *testing.T, n *node) {
	t.Helper()
	out, err := goBuildClient(n.client.modfile, "", os.DevNull)
	if err == nil || !strings.Contains(string(out), "GetStatusNetworkList undefined") || !strings.Contains(string(out), "GCNetworkList undefined") {
		t.Errorf("building the STATUS/GC client against libcni %s: %v, want undefined GetStatusNetworkList and GCNetworkList\n%s", n.client.libcni, err, out)
	}
	for _, verb := range []string{"STATUS", "GC"} {
		r := n.run(n.cacheDir, nil, "raw", verb)
		if r.Error == nil || r.Error.Code != types.ErrIncompatibleCNIVersion || !strings.Contains(r.Error.Msg, "config version does not allow "+verb) {
			t.Errorf("%s at 1.0.0: %v, want code 1", verb, r.err())
		}
	}
}

// TestOldDeclarationFailsOnLibcni11 is the failure the conflist's versions
// prevent, seen through the same client: a conflist declaring only 1.1.0
// makes libcni 1.1 reject the plugin's result, so no pod starts. It shows
// the suite above can see that failure.
func TestOldDeclarationFailsOnLibcni11(t *testing.T) {
	c := *clients[0]
	c.listVersion = "1.1.0"
	n := newNode(t, &c, "10.244.124.0/24")
	path := filepath.Join(n.confDir, cni.ConflistName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	raw["cniVersion"] = "1.1.0"
	delete(raw, "cniVersions")
	if b, err = json.Marshal(raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}

	p := n.newPod("a")
	r := n.run(n.cacheDir, p, "add")
	if r.Error == nil || !strings.Contains(r.Error.Msg, `unsupported CNI result version "1.1.0"`) {
		t.Fatalf("ADD through libcni %s of a 1.1.0-only conflist: %v, want unsupported CNI result version", c.libcni, r.err())
	}
	// A runtime DELs after a failed ADD; that works and frees the address.
	n.mustOK(n.cacheDir, p, "del")
	n.gone(p, "DEL")
}
