package cnitest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/integration/internal/cninode"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/ipam"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// node is a network namespace playing a Kubernetes node: the plugin runs in
// it and attaches pods to the bridge the agent's data plane makes there. Its
// conflist, address store and libcni cache live in the test's temp dirs.
type node struct {
	t        testing.TB
	prefix   string
	ns       *netnstest.NS
	handle   ns.NetNS
	podCIDR  netip.Prefix
	confDir  string
	dataDir  string
	cacheDir string
	list     *libcni.NetworkConfigList
	cni      *libcni.CNIConfig
}

func requireSetup(t testing.TB) {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "ping", "nft")
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// nodeMTU is the MTU of the node's conflist and bridge.
const nodeMTU = 1400

// newNode makes the node namespace, plays the agent's start there
// (agentStart) and writes the agent's conflist for podCIDR with
// cni.WriteConflist, then loads it the way runtimes do.
func newNode(t testing.TB, podCIDR string, portmap bool) *node {
	t.Helper()
	requireSetup(t)
	n := &node{t: t, prefix: netnstest.Prefix(t), podCIDR: netip.MustParsePrefix(podCIDR),
		confDir: t.TempDir(), dataDir: t.TempDir(), cacheDir: t.TempDir()}
	n.ns = netnstest.NewNS(t, n.prefix+"-node")
	h, err := ns.GetNS(n.path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	n.handle = h
	n.agentStart()
	if _, err := cni.WriteConflist(n.confDir, cni.NodeConf{MTU: nodeMTU, PodCIDRs: []netip.Prefix{n.podCIDR}, DataDir: n.dataDir, PortMap: portmap}); err != nil {
		t.Fatal(err)
	}
	n.list, err = libcni.LoadNetworkConf(n.confDir, cni.NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, n.cacheDir, cninode.NewExec(h))
	return n
}

func (n *node) path() string { return "/run/netns/" + n.ns.Name }

// agentStart makes what the agent's start leaves for the plugin: the
// fail-closed guard and the bridge (see addGuard and addBridge).
func (n *node) agentStart() {
	n.t.Helper()
	n.addGuard()
	n.addBridge()
}

// addGuard and removeGuard make and drop the guard table in the node
// namespace, as the agent's start and a reboot do. An empty table of its
// name stands in for the guard: the plugin only checks that the table
// exists (the guard's rules are tested in integration/datapath). The table
// goes with the namespace.
func (n *node) addGuard()    { n.ns.MustRun(n.t, "nft", "add", "table", "inet", cni.GuardTable) }
func (n *node) removeGuard() { n.ns.MustRun(n.t, "nft", "delete", "table", "inet", cni.GuardTable) }

// addBridge makes the pod bridge with the agent's own code
// (dataplane.EnsureBridge, run in the node namespace): the agent's data
// plane is the bridge's only owner, the plugin only checks it. The bridge
// goes with the namespace; removeBridge deletes it, as a reboot does.
func (n *node) addBridge() {
	n.t.Helper()
	dp, err := dataplane.New(dataplane.Config{WGInterface: nodenet.Interface})
	if err != nil {
		n.t.Fatal(err)
	}
	if err := n.handle.Do(func(ns.NetNS) error { return dp.EnsureBridge([]netip.Prefix{n.podCIDR}, nodeMTU) }); err != nil {
		n.t.Fatalf("the agent's bridge: %v", err)
	}
}

func (n *node) removeBridge() { n.ns.MustRun(n.t, "ip", "link", "del", cni.DefaultBridge) }

// pod is a pod network namespace.
type pod struct {
	id string
	ns *netnstest.NS
}

func (p *pod) path() string { return "/run/netns/" + p.ns.Name }

func (n *node) newPod(name string) *pod {
	n.t.Helper()
	return &pod{id: n.prefix + "-" + name, ns: netnstest.NewNS(n.t, n.prefix+"-"+name)}
}

func (n *node) rt(p *pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.id, NetNS: p.path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", p.id}}}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (n *node) add(p *pod) (*current.Result, error) {
	res, err := n.cni.AddNetworkList(ctx(n.t), n.list, n.rt(p))
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *node) mustAdd(p *pod) *current.Result {
	n.t.Helper()
	r, err := n.add(p)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", p.id, err)
	}
	return r
}

func (n *node) del(p *pod) error   { return n.cni.DelNetworkList(ctx(n.t), n.list, n.rt(p)) }
func (n *node) check(p *pod) error { return n.cni.CheckNetworkList(ctx(n.t), n.list, n.rt(p)) }
func (n *node) status() error      { return n.cni.GetStatusNetworkList(ctx(n.t), n.list) }

// records reads the plugin's address store directly.
func (n *node) records() []ipam.Allocation {
	n.t.Helper()
	list, err := cninode.Allocations(n.dataDir)
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

// links returns the names of the node's links.
func (n *node) links() []string {
	n.t.Helper()
	out := n.ns.MustRun(n.t, "ip", "-o", "link", "show")
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			names = append(names, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return names
}

func podAddr(t testing.TB, r *current.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatalf("result without IPs: %v", r)
	}
	a, ok := netip.AddrFromSlice(r.IPs[0].Address.IP)
	if !ok {
		t.Fatalf("bad IP in %v", r)
	}
	return a.Unmap()
}

func ping(t testing.TB, from *netnstest.NS, to netip.Addr) {
	t.Helper()
	if out, err := from.Run("ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", to.String()); err != nil {
		t.Errorf("ping %s from %s: %v\n%s", to, from.Name, err, out)
	}
}

// cniCode returns the CNI error code in err, or fails.
func cniCode(t testing.TB, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T) is not a CNI error", err, err)
	}
	return e.Code
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
