package datapath

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
)

// nodeSpec describes one node of a test cluster.
type nodeSpec struct {
	// ulMTU is the node's underlay MTU (both ends of its veth); 0 = 1500.
	ulMTU int
}

// cluster is N nodes over one underlay bridge, each with its own network
// namespace, agent (the "node" role) and pod namespace. Node i (from 1) has
// underlay 198.51.100.10+i and pods 10.244.i.0/24.
type cluster struct {
	t        *testing.T
	dir      string
	ul       *netnstest.NS
	nodes    []*testNode
	spec     []mesh.RawNode
	specPath string
	annDir   string
}

// newCluster builds the namespaces and the underlay; agents are started
// with startAgent, pods attached with attachPod. The node spec (what the
// apiserver would list) is written only by writeSpec: until then the
// agents' node source has not synced and they do not reconcile.
func newCluster(t *testing.T, specs ...nodeSpec) *cluster {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "wg", "ping", "nft", "iptables", "ip6tables", "tcpdump", "nsenter", "ethtool")
	prefix := netnstest.Prefix(t)
	c := &cluster{t: t, dir: t.TempDir()}
	c.specPath = filepath.Join(c.dir, "nodes.json")
	c.annDir = filepath.Join(c.dir, "annotations")
	if err := os.MkdirAll(c.annDir, 0o755); err != nil {
		t.Fatal(err)
	}

	c.ul = newUnderlay(t, prefix)

	for i, s := range specs {
		suffix := string(rune('a' + i))
		n := &testNode{
			name:    "node-" + suffix,
			under:   netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)}),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 0}), 24),
			ulMTU:   s.ulMTU,
		}
		n.gw = n.podCIDR.Addr().Next()
		n.podIP = n.gw.Next()
		n.ns = netnstest.NewNS(t, prefix+"-n"+suffix)
		n.pod = netnstest.NewNS(t, prefix+"-p"+suffix)
		n.ulPort = "v" + suffix
		netnstest.Veth(t, c.ul, n.ulPort, netip.Prefix{}, n.ns, "eth0", netip.PrefixFrom(n.under, 24))
		c.ul.MustRun(t, "ip", "link", "set", n.ulPort, "master", "br0")
		if s.ulMTU != 0 {
			mtu := strconv.Itoa(s.ulMTU)
			c.ul.MustRun(t, "ip", "link", "set", n.ulPort, "mtu", mtu)
			n.ns.MustRun(t, "ip", "link", "set", "eth0", "mtu", mtu)
			// A veth hands GSO packets over whole, past the MTU
			// check, where a real link of that MTU carries no
			// larger frame. Without segmentation offloads on the
			// port the bridge segments them first and the MTU
			// bites, for WireGuard's batched UDP too.
			c.ul.MustRun(t, "ethtool", "-K", n.ulPort, "gso", "off", "tso", "off", "tx-udp-segmentation", "off")
		}
		n.ns.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
		// The hostile defaults the agent must cope with: a FORWARD
		// policy of DROP and, as on any Kubernetes node, forwarding on
		// before the agent ever runs (so a pod packet with no route of
		// ours would leave by the default route).
		n.ns.MustRun(t, "iptables", "-P", "FORWARD", "DROP")
		n.ns.MustRun(t, "ip6tables", "-P", "FORWARD", "DROP")
		n.ns.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		n.keyFile = filepath.Join(c.dir, n.name, "private.key")
		n.runDir = filepath.Join(c.dir, n.name, "run")
		c.nodes = append(c.nodes, n)
		c.spec = append(c.spec, mesh.RawNode{Name: n.name, PodCIDRs: []string{n.podCIDR.String()}, InternalIPs: []string{n.under.String()}})
	}
	return c
}

// newUnderlay makes the namespace both topologies' nodes hang off: a bridge
// br0 with 198.51.100.1/24, their default gateway.
func newUnderlay(t *testing.T, prefix string) *netnstest.NS {
	t.Helper()
	ul := netnstest.NewNS(t, prefix+"-ul")
	ul.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	ul.MustRun(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "br0")
	ul.MustRun(t, "ip", "link", "set", "br0", "up")
	return ul
}

// writeSpec publishes the node list (plus extra spec-only nodes).
func (c *cluster) writeSpec(extra ...mesh.RawNode) {
	c.t.Helper()
	raw, err := json.Marshal(append(append([]mesh.RawNode{}, c.spec...), extra...))
	if err != nil {
		c.t.Fatal(err)
	}
	tmp := c.specPath + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, c.specPath); err != nil {
		c.t.Fatal(err)
	}
}

// setAnnotations sets a (spec-only) node's published annotations, as the
// node's own Publish would.
func (c *cluster) setAnnotations(node string, ann map[string]string) {
	c.t.Helper()
	if err := filesource.Annotate(c.annDir, node, ann); err != nil {
		c.t.Fatal(err)
	}
}

// startAgent starts (or restarts) n's agent and waits until it is
// fail-closed (Prepare done).
func (c *cluster) startAgent(n *testNode) time.Duration {
	c.t.Helper()
	env, err := childEnv("node", nodeConfig{
		Name: n.name, Interface: wgIface, ListenPort: listenPort, KeyFile: n.keyFile,
		Spec: c.specPath, AnnDir: c.annDir, ClusterCIDRs: dataplane.DefaultClusterCIDRs, RunDir: n.runDir,
		CNIConfDir: filepath.Join(c.dir, n.name, "net.d"),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	start := time.Now()
	n.agent = n.ns.Start(c.t, n.name+" agent", env, self(c.t))
	n.waitOutput(c.t, preparedMessage, 10*time.Second)
	return time.Since(start)
}

// killAgent SIGKILLs n's agent and waits until it is gone.
func (c *cluster) killAgent(n *testNode) {
	c.t.Helper()
	if err := n.agent.Stop(syscall.SIGKILL, 5*time.Second); err != nil {
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) {
			c.t.Fatalf("kill %s agent: %v", n.name, err)
		}
	}
}

// waitPeered waits until n's device has other as a peer with the expected
// endpoint and allowed IPs.
func (c *cluster) waitPeered(n, other *testNode) {
	c.t.Helper()
	netnstest.Eventually(c.t, 20*time.Second, n.name+" peers with "+other.name, func() error {
		if n.agent.Exited() {
			c.t.Fatalf("%s agent exited early:\n%s", n.name, n.agent.Output())
		}
		dump, err := wgShow(n.agent, "dump")
		if err != nil {
			return err
		}
		want := fmt.Sprintf("%s:%d\t%s", other.under, listenPort, other.podCIDR)
		if !strings.Contains(dump, want) {
			return fmt.Errorf("no peer line with %q in:\n%s", want, dump)
		}
		return nil
	})
}

// preBridge creates the pod bridge with its gateway address before the agent
// ever ran: the worst case of a node whose pods exist without the agent's
// rules (the CNI plugin itself refuses ADD until the agent's guard table
// exists, so this is a robustness check beyond what the plugin allows).
func (c *cluster) preBridge(n *testNode) {
	c.t.Helper()
	n.ns.MustRun(c.t, "ip", "link", "add", dataplane.DefaultBridge, "type", "bridge")
	n.ns.MustRun(c.t, "ip", "addr", "add", netip.PrefixFrom(n.gw, n.podCIDR.Bits()).String(), "dev", dataplane.DefaultBridge)
	n.ns.MustRun(c.t, "ip", "link", "set", dataplane.DefaultBridge, "up")
}

// attachPod plugs n's pod into the bridge (which must exist) with the given
// MTU, as the CNI plugin does.
func (c *cluster) attachPod(n *testNode, mtu int) {
	c.t.Helper()
	netnstest.Eventually(c.t, 10*time.Second, n.name+" bridge", func() error {
		_, err := n.ns.Run("ip", "link", "show", dataplane.DefaultBridge)
		return err
	})
	netnstest.Veth(c.t, n.pod, "eth0", netip.PrefixFrom(n.podIP, 24), n.ns, "vpod", netip.Prefix{})
	n.ns.MustRun(c.t, "ip", "link", "set", "vpod", "master", dataplane.DefaultBridge)
	// Both ends, as the CNI plugin does.
	n.pod.MustRun(c.t, "ip", "link", "set", "eth0", "mtu", strconv.Itoa(mtu))
	n.ns.MustRun(c.t, "ip", "link", "set", "vpod", "mtu", strconv.Itoa(mtu))
	n.pod.MustRun(c.t, "ip", "route", "add", "default", "via", n.gw.String())
}

// waitOutput waits for a line in the agent's output.
func (n *testNode) waitOutput(t *testing.T, line string, timeout time.Duration) {
	t.Helper()
	netnstest.Eventually(t, timeout, n.name+" agent: "+line, func() error {
		if n.agent.Exited() {
			t.Fatalf("%s agent exited:\n%s", n.name, n.agent.Output())
		}
		if !strings.Contains(n.agent.Output(), line) {
			return errors.New("not yet")
		}
		return nil
	})
}

// podAddrLines returns the capture lines that show a cluster pod address:
// pod traffic in the clear.
func podAddrLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, "10.244.") {
			out = append(out, l)
		}
	}
	return out
}

// startPinger runs a ping in ns towards dst for the rest of the test, every
// 50 ms: a pod that keeps sending whatever state the mesh is in.
func startPinger(t *testing.T, ns *netnstest.NS, dst string, args ...string) *netnstest.Proc {
	t.Helper()
	argv := append([]string{"ping", "-n", "-i", "0.05", "-W", "1"}, args...)
	return ns.Start(t, "ping "+dst+" from "+ns.Name, nil, append(argv, dst)...)
}

// pingReplies counts the echo replies a running ping has reported.
func pingReplies(p *netnstest.Proc) int {
	return len(pingout.Parse(p.Output()).Replies)
}
