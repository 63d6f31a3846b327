package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/integration/internal/cninode"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// Variant is one way of carrying pod traffic between the two nodes.
type Variant string

// The variants, in report order.
const (
	// Plain routes the pod prefixes over the underlay unencrypted: the
	// same topology without a tunnel, the physical limit of this box.
	Plain Variant = "plain"
	// Upstream is the standalone wireguard-go built from the module
	// version wgmesh embeds, configured with wg.
	Upstream Variant = "upstream"
	// Debian is /usr/bin/wireguard-go from Debian's package.
	Debian Variant = "debian"
	// WGMesh is wgmesh's own data path: wgdev, dataplane and the mesh
	// reconciler, pods attached by the wgmesh CNI plugin.
	WGMesh Variant = "wgmesh"
)

// AllVariants in report order.
var AllVariants = []Variant{Plain, Upstream, Debian, WGMesh}

const (
	listenPort = 51820
	iperfPort  = 5201
	rrPort     = 7000
	// wgOverhead is what WireGuard adds to a packet in the worst case
	// (IPv6 outer header); wg-quick and wgmesh both subtract it.
	wgOverhead = dataplane.WireGuardOverhead
	underlayGW = "198.51.100.1"
)

// Tools are the programs and binaries the harness runs.
type Tools struct {
	// Self is the test binary, re-executed for the node, RR and scale roles.
	Self string
	// UpstreamWG is wireguard-go built from this module's go.mod version.
	UpstreamWG string
	// DebianWG is Debian's wireguard-go.
	DebianWG string
	// CNIDir holds the wgmesh CNI plugin binary, named "wgmesh".
	CNIDir string
	// LabDir, if set, holds the lab's binaries (wgmesh-agent, wgmesh-cni,
	// wgmesh-lab, kube-apiserver, etcd, kubectl): the wgmesh variant then
	// runs the real agent on a real apiserver (integration/lab) instead of
	// the node role.
	LabDir string
}

// Pair is the two-node topology of one variant:
//
//	pod-a ─veth─ bridge ─ tunnel ─ eth0 ══veth══ eth0 ─ tunnel ─ bridge ─veth─ pod-b
//	           (node-a namespace)                  (node-b namespace)
type Pair struct {
	Variant     Variant
	Prefix      string
	UnderlayMTU int
	// PodMTU is the pods' MTU: what wgmesh chose automatically for the
	// wgmesh variant, underlay-80 (as wg-quick does) for the others.
	PodMTU int
	Nodes  [2]*Node
	// Lab runs the pair (wgmesh on integration/lab), nil otherwise.
	Lab *lab.Lab
}

// Runner makes commands that run somewhere (a namespace).
// *netnstest.NS is one.
type Runner interface {
	Command(ctx context.Context, argv ...string) *exec.Cmd
}

// Node is one node namespace with one pod.
type Node struct {
	Name string
	// NS is the node's network namespace.
	NS *netnstest.NS
	// Pod runs commands in the pod's network namespace; PodNS is that
	// namespace when the harness made it (nil in a lab).
	Pod   Runner
	PodNS *netnstest.NS
	// WG runs `wg` where the tunnel's UAPI socket is visible.
	WG      Runner
	Under   netip.Addr
	PodCIDR netip.Prefix
	GW      netip.Addr
	PodIP   netip.Addr
	// Iface is the tunnel interface ("" for plain).
	Iface string
	// Daemon is the WireGuard process (wireguard-go, or the wgmesh node
	// role) when the harness started it; nil for plain and in a lab.
	Daemon *netnstest.Proc
	// Pid is the WireGuard daemon's process id (0 for plain).
	Pid int
	// KeyFile holds the node's private key.
	KeyFile string
	// ConfDir is the CNI conflist directory the wgmesh node writes to.
	ConfDir string
}

// SetupOptions shape a Pair.
type SetupOptions struct {
	UnderlayMTU int
	// NoOffload starts wgmesh's TUN without IFF_VNET_HDR (the fallback
	// path for kernels without TUN offloads). wgmesh variant only.
	NoOffload bool
	// Env is extra environment for the wgmesh processes (agent or node
	// role), e.g. GOMEMLIMIT=off.
	Env []string
	// AgentArgs are extra flags for the lab's agents.
	AgentArgs []string
	// Rules puts wgmesh's dataplane on an upstream or debian pair.
	Rules bool
	// Lab runs an upstream pair on a lab of its own, in place of the
	// agents (see upstreamLabPair). Needs the lab (Tools.LabDir).
	Lab bool
}

// Setup builds the topology of variant v and waits until pod-a reaches
// pod-b. Everything is removed in t.Cleanup.
func Setup(t testing.TB, tools Tools, v Variant, opt SetupOptions) *Pair {
	t.Helper()
	if opt.UnderlayMTU == 0 {
		opt.UnderlayMTU = 1500
	}
	var p *Pair
	switch {
	case opt.Lab && (v != Upstream || tools.LabDir == ""):
		t.Fatalf("[%s] a lab pair needs the upstream variant and the lab (-bench.lab)", v)
	case opt.Lab:
		p = upstreamLabPair(t, tools, opt)
	case v == WGMesh && tools.LabDir != "" && !opt.NoOffload:
		p = labPair(t, tools, opt)
	default:
		p = setupLocal(t, tools, v, opt)
	}
	for i, n := range p.Nodes {
		other := p.Nodes[1-i]
		netnstest.Eventually(t, 20*time.Second, fmt.Sprintf("[%s] %s pod reaches %s pod", v, n.Name, other.Name), func() error {
			if n.Daemon != nil && n.Daemon.Exited() {
				t.Fatalf("[%s] %s daemon exited:\n%s", v, n.Name, n.Daemon.Output())
			}
			return RunQuiet(n.Pod, "ping", "-n", "-c", "1", "-W", "1", other.PodIP.String())
		})
		// A full-size packet with DF set crosses: the pod MTU fits the
		// tunnel and the underlay.
		if err := RunQuiet(n.Pod, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", strconv.Itoa(p.PodMTU-28), other.PodIP.String()); err != nil {
			t.Fatalf("[%s] pod MTU %d does not cross: %v", v, p.PodMTU, err)
		}
	}
	return p
}

// setupLocal builds the pair in namespaces of its own.
func setupLocal(t testing.TB, tools Tools, v Variant, opt SetupOptions) *Pair {
	t.Helper()
	p := &Pair{Variant: v, Prefix: netnstest.Prefix(t), UnderlayMTU: opt.UnderlayMTU, PodMTU: opt.UnderlayMTU - wgOverhead}
	dir := t.TempDir()
	for i := range p.Nodes {
		s := string(rune('a' + i))
		n := &Node{
			Name:    "node-" + s,
			Under:   netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 0}), 24),
			KeyFile: filepath.Join(dir, "node-"+s, "private.key"),
			ConfDir: filepath.Join(dir, "node-"+s, "net.d"),
		}
		n.GW = n.PodCIDR.Addr().Next()
		n.PodIP = n.GW.Next()
		n.NS = netnstest.NewNS(t, p.Prefix+"-n"+s)
		n.PodNS = netnstest.NewNS(t, p.Prefix+"-p"+s)
		n.Pod, n.WG = n.PodNS, n.NS
		if v != Plain {
			// Unique per pair: the UAPI socket path
			// (wgdev.SocketPath) is shared by all namespaces
			// of this machine.
			n.Iface = p.Prefix + s
		}
		p.Nodes[i] = n
	}
	// The underlay: a bridge in its own namespace with a veth per node,
	// the same shape as integration/lab's.
	ul := netnstest.NewNS(t, p.Prefix+"-ul")
	ul.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	ul.MustRun(t, "ip", "addr", "add", underlayGW+"/24", "dev", "br0")
	ul.MustRun(t, "ip", "link", "set", "br0", "up")
	m := strconv.Itoa(opt.UnderlayMTU)
	for i, n := range p.Nodes {
		link := fmt.Sprintf("n%d", i+1)
		ul.MustRun(t, "ip", "link", "add", link, "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", n.NS.Name)
		ul.MustRun(t, "ip", "link", "set", link, "master", "br0", "up")
		n.NS.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(n.Under, 24).String(), "dev", "eth0")
		n.NS.MustRun(t, "ip", "link", "set", "eth0", "up")
		// A default route makes eth0 the underlay for wgmesh's MTU
		// detection, as on a real node; the underlay routes nowhere.
		n.NS.MustRun(t, "ip", "route", "add", "default", "via", underlayGW)
	}

	switch v {
	case Plain:
		for i, n := range p.Nodes {
			setupBridge(t, n, p.PodMTU)
			n.NS.MustRun(t, "ip", "route", "add", p.Nodes[1-i].PodCIDR.String(), "via", p.Nodes[1-i].Under.String())
			attachPod(t, n, p.PodMTU)
		}
	case Upstream, Debian:
		bin := tools.UpstreamWG
		if v == Debian {
			bin = tools.DebianWG
		}
		var pubs [2]string
		for i, n := range p.Nodes {
			key, _, err := wgdev.LoadOrCreateKey(n.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			pubs[i] = key.PublicKey().String()
		}
		for i, n := range p.Nodes {
			other := p.Nodes[1-i]
			startWireguardGo(t, n, bin)
			n.Pid = n.Daemon.Pid()
			n.NS.MustRun(t, "wg", "set", n.Iface, "private-key", n.KeyFile, "listen-port", strconv.Itoa(listenPort),
				"peer", pubs[1-i], "allowed-ips", other.PodCIDR.String(),
				"endpoint", netip.AddrPortFrom(other.Under, listenPort).String())
			n.NS.MustRun(t, "ip", "link", "set", n.Iface, "mtu", strconv.Itoa(p.PodMTU), "up")
			if opt.Rules {
				applyDataplane(t, tools.Self, n, other, p.PodMTU)
			} else {
				n.NS.MustRun(t, "ip", "route", "add", other.PodCIDR.String(), "dev", n.Iface)
				setupBridge(t, n, p.PodMTU)
			}
			attachPod(t, n, p.PodMTU)
		}
	case WGMesh:
		setupWGMesh(t, tools, p, dir, opt)
	default:
		t.Fatalf("unknown variant %q", v)
	}
	for _, n := range p.Nodes {
		if v == Plain || v == Debian || v == Upstream {
			n.NS.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		}
	}
	return p
}

// setupBridge makes the pod bridge with the gateway address, as wgmesh's
// dataplane does, for the variants without wgmesh.
func setupBridge(t testing.TB, n *Node, mtu int) {
	t.Helper()
	n.NS.MustRun(t, "ip", "link", "add", cni.DefaultBridge, "mtu", strconv.Itoa(mtu), "type", "bridge")
	n.NS.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(n.GW, n.PodCIDR.Bits()).String(), "dev", cni.DefaultBridge)
	n.NS.MustRun(t, "ip", "link", "set", cni.DefaultBridge, "up")
}

// attachPod connects the pod with a veth to the bridge, like a bridge CNI
// plugin does, using iproute2.
func attachPod(t testing.TB, n *Node, mtu int) {
	t.Helper()
	host := "vp" + strings.TrimPrefix(n.Name, "node-")
	netnstest.Veth(t, n.PodNS, "eth0", netip.PrefixFrom(n.PodIP, n.PodCIDR.Bits()), n.NS, host, netip.Prefix{})
	n.PodNS.MustRun(t, "ip", "link", "set", "eth0", "mtu", strconv.Itoa(mtu))
	n.NS.MustRun(t, "ip", "link", "set", host, "mtu", strconv.Itoa(mtu), "master", cni.DefaultBridge)
	n.PodNS.MustRun(t, "ip", "route", "add", "default", "via", n.GW.String())
}

// startWireguardGo runs a standalone wireguard-go in the node namespace, in
// the foreground so that its pid is the daemon's, and stops it (SIGTERM,
// which removes its UAPI socket) in cleanup.
func startWireguardGo(t testing.TB, n *Node, bin string) {
	t.Helper()
	sock := wgdev.SocketPath(n.Iface)
	t.Cleanup(func() {
		// After the process is gone (cleanups run in reverse order):
		// a killed daemon leaves its socket behind.
		if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	})
	n.Daemon = n.NS.StartSession(t, n.Name+" wireguard-go", []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"}, bin, "-f", n.Iface)
	t.Cleanup(func() { n.Daemon.Stop(syscall.SIGTERM, 5*time.Second) })
	netnstest.Eventually(t, 10*time.Second, n.Name+" wireguard-go UAPI socket", func() error {
		if n.Daemon.Exited() {
			t.Fatalf("wireguard-go exited:\n%s", n.Daemon.Output())
		}
		_, err := os.Stat(sock)
		return err
	})
}

// setupWGMesh runs the agent in both node namespaces (the node role:
// mesh/agent fed by a node list file), then attaches each pod with the wgmesh
// CNI plugin through libcni, exactly as a container runtime does.
func setupWGMesh(t testing.TB, tools Tools, p *Pair, dir string, opt SetupOptions) {
	t.Helper()
	spec := filepath.Join(dir, "nodes.json")
	var raws []mesh.RawNode
	for _, n := range p.Nodes {
		key, _, err := wgdev.LoadOrCreateKey(n.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, SpecNode(n.Name, key.PublicKey().String(), n.Under, n.PodCIDR))
	}
	if err := WriteSpec(spec, raws); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes {
		StartNodeRole(t, tools.Self, n, NodeRoleConfig{
			Name: n.Name, Interface: n.Iface, ListenPort: listenPort, KeyFile: n.KeyFile, Spec: spec,
			CNIConfDir: n.ConfDir, CNIDataDir: filepath.Join(filepath.Dir(n.ConfDir), "cni-data"),
			ClusterCIDRs: dataplane.DefaultClusterCIDRs, NoOffload: opt.NoOffload, Env: opt.Env,
		})
	}
	for i, n := range p.Nodes {
		other := p.Nodes[1-i]
		netnstest.Eventually(t, 20*time.Second, n.Name+" peers with "+other.Name, func() error {
			if n.Daemon.Exited() {
				t.Fatalf("%s node exited:\n%s", n.Name, n.Daemon.Output())
			}
			out, err := n.NS.Run("wg", "show", n.Iface, "allowed-ips")
			if err != nil {
				return err
			}
			if !strings.Contains(out, other.PodCIDR.String()) {
				return fmt.Errorf("no peer for %s yet: %q", other.PodCIDR, out)
			}
			return nil
		})
		netnstest.Eventually(t, 10*time.Second, n.Name+" conflist", func() error {
			_, err := os.Stat(filepath.Join(n.ConfDir, cni.ConflistName))
			return err
		})
		n.PodIP = AttachCNI(t, tools.CNIDir, n, "bench-"+p.Prefix+"-"+n.Name)
		mtu, err := LinkMTU(n.Pod, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		p.PodMTU = mtu
	}
}

// SpecNode is a Node as kube-controller-manager and the agent leave it:
// podCIDR, InternalIP and the agent's published key and endpoint.
func SpecNode(name, pub string, under netip.Addr, podCIDR netip.Prefix) mesh.RawNode {
	return mesh.RawNode{
		Name:     name,
		PodCIDRs: []string{podCIDR.String()},
		Annotations: map[string]string{
			mesh.AnnotationPublicKey: pub,
			mesh.AnnotationEndpoint:  netip.AddrPortFrom(under, listenPort).String(),
		},
		InternalIPs: []string{under.String()},
		UID:         "uid-" + name,
		Created:     time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

// WriteSpec atomically replaces the node list file the node roles read.
func WriteSpec(path string, nodes []mesh.RawNode) error {
	raw, err := json.Marshal(nodes)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CNIRunner is a container runtime's view of a node: libcni with the
// node's conflist, executing plugins inside the node's network namespace.
type CNIRunner struct {
	List  *libcni.NetworkConfigList
	CNI   *libcni.CNIConfig
	Node  ns.NetNS
	Cache string
}

// NewCNIRunner loads the node's conflist (the first in confDir, as
// runtimes pick it) and prepares libcni to exec plugins from binDir inside
// the node namespace.
func NewCNIRunner(t testing.TB, binDir, confDir string, node *netnstest.NS) *CNIRunner {
	t.Helper()
	list, err := libcni.LoadNetworkConf(confDir, cni.NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ns.GetNS("/run/netns/" + node.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cache := t.TempDir()
	return &CNIRunner{
		List:  list,
		CNI:   libcni.NewCNIConfigWithCacheDir([]string{binDir}, cache, cninode.NewExec(h)),
		Node:  h,
		Cache: cache,
	}
}

// RuntimeConf names one pod sandbox.
func RuntimeConf(id string, pod *netnstest.NS) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: "/run/netns/" + pod.Name, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", id}}}
}

// Add runs CNI ADD and returns the pod's first address.
func (r *CNIRunner) Add(ctx context.Context, rt *libcni.RuntimeConf) (netip.Addr, error) {
	res, err := r.CNI.AddNetworkList(ctx, r.List, rt)
	if err != nil {
		return netip.Addr{}, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(cur.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("ADD result without IPs: %v", cur)
	}
	a, ok := netip.AddrFromSlice(cur.IPs[0].Address.IP)
	if !ok {
		return netip.Addr{}, fmt.Errorf("bad IP in ADD result %v", cur)
	}
	return a.Unmap(), nil
}

// Del runs CNI DEL.
func (r *CNIRunner) Del(ctx context.Context, rt *libcni.RuntimeConf) error {
	return r.CNI.DelNetworkList(ctx, r.List, rt)
}

// AttachCNI adds n.Pod with the wgmesh plugin and removes it in cleanup
// (while the node still exists).
func AttachCNI(t testing.TB, binDir string, n *Node, id string) netip.Addr {
	t.Helper()
	r := NewCNIRunner(t, binDir, n.ConfDir, n.NS)
	rt := RuntimeConf(id, n.PodNS)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ip, err := r.Add(ctx, rt)
	if err != nil {
		t.Fatalf("CNI ADD %s on %s: %v", id, n.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.Del(ctx, rt); err != nil {
			t.Errorf("cleanup: CNI DEL %s: %v", id, err)
		}
	})
	return ip
}

// Run runs argv via r and returns its combined output.
func Run(r Runner, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := r.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// RunQuiet is Run without the output.
func RunQuiet(r Runner, argv ...string) error {
	_, err := Run(r, argv...)
	return err
}

// LinkMTU reads an interface's MTU with iproute2 (not /sys, which shows
// the devices of whichever namespace mounted it).
func LinkMTU(r Runner, dev string) (int, error) {
	out, err := Run(r, "ip", "-j", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	var links []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("ip -j link show %s: %q: %v", dev, out, err)
	}
	return links[0].MTU, nil
}

// DataplaneRoleConfig configures the dataplane role.
type DataplaneRoleConfig struct {
	Interface string
	State     mesh.DataplaneState
	// PrepareOnly installs just the fail-closed guard (what the agent does
	// first thing at start) and, if State has LocalPodCIDRs, the pod bridge
	// for them (dataplane.EnsureBridge: the agent's data plane owns the
	// bridge and the plugin refuses ADD without it), e.g. for a node that
	// only runs CNI.
	PrepareOnly bool
}

// applyDataplane runs wgmesh's dataplane (Prepare, then one Apply) in the
// node namespace, for a pair that is not wgmesh.
func applyDataplane(t testing.TB, self string, n, other *Node, mtu int) {
	t.Helper()
	runDataplaneRoleIn(t, self, n.NS, DataplaneRoleConfig{Interface: n.Iface, State: mesh.DataplaneState{
		LocalPodCIDRs: []netip.Prefix{n.PodCIDR}, RemotePodCIDRs: []netip.Prefix{other.PodCIDR}, MTU: mtu}})
}

func runDataplaneRole(raw []byte) error {
	var cfg DataplaneRoleConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	dp, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface})
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := dp.Prepare(ctx); err != nil {
		return err
	}
	if cfg.PrepareOnly {
		if len(cfg.State.LocalPodCIDRs) == 0 {
			return nil
		}
		return dp.EnsureBridge(cfg.State.LocalPodCIDRs, cfg.State.MTU)
	}
	return dp.Apply(ctx, cfg.State)
}

// runDataplaneRoleIn runs the dataplane role in a namespace.
func runDataplaneRoleIn(t testing.TB, self string, ns *netnstest.NS, cfg DataplaneRoleConfig) {
	t.Helper()
	env, err := roleEnv("dataplane", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := ns.Command(ctx, self)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dataplane role in %s: %v\n%s", ns.Name, err, out)
	}
}
