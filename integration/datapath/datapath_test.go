package datapath

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

const (
	wgIface    = "wgmesh0"
	listenPort = 51820
)

type testNode struct {
	name    string
	ns      *netnstest.NS
	pod     *netnstest.NS
	under   netip.Addr   // underlay address
	podCIDR netip.Prefix // 10.244.i.0/24
	gw      netip.Addr   // 10.244.i.1
	podIP   netip.Addr   // 10.244.i.2
	keyFile string
	agent   *netnstest.Proc
}

// TestTwoNodeDatapath runs two nodes' data paths over a veth underlay, with
// iptables FORWARD policy DROP on both, and checks that the bridge gateways
// and pods reach each other only through WireGuard.
func TestTwoNodeDatapath(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "wg", "ping", "nft", "iptables", "ip6tables", "tcpdump", "nsenter", "ethtool")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	prefix := netnstest.Prefix(t)
	dir := t.TempDir()

	// Underlay: one namespace with a bridge, 198.51.100.1 on it.
	ul := netnstest.NewNS(t, prefix+"-ul")
	ul.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	ul.MustRun(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "br0")
	ul.MustRun(t, "ip", "link", "set", "br0", "up")

	nodes := []*testNode{
		{name: "node-a", under: netip.MustParseAddr("198.51.100.11"), podCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		{name: "node-b", under: netip.MustParseAddr("198.51.100.12"), podCIDR: netip.MustParsePrefix("10.244.2.0/24")},
	}
	var spec []mesh.RawNode
	for i, n := range nodes {
		suffix := string(rune('a' + i))
		n.ns = netnstest.NewNS(t, prefix+"-n"+suffix)
		n.pod = netnstest.NewNS(t, prefix+"-p"+suffix)
		n.gw = n.podCIDR.Addr().Next()
		n.podIP = n.gw.Next()
		netnstest.Veth(t, ul, "v"+suffix, netip.Prefix{}, n.ns, "eth0", netip.PrefixFrom(n.under, 24))
		ul.MustRun(t, "ip", "link", "set", "v"+suffix, "master", "br0")
		n.ns.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
		// The hostile default the agent must cope with.
		n.ns.MustRun(t, "iptables", "-P", "FORWARD", "DROP")
		n.ns.MustRun(t, "ip6tables", "-P", "FORWARD", "DROP")
		// An existing key, as left by a previous run, exercises loading.
		n.keyFile = filepath.Join(dir, n.name, "private.key")
		if suffix == "a" {
			if _, _, err := wgdev.LoadOrCreateKey(n.keyFile); err != nil {
				t.Fatal(err)
			}
		}
		spec = append(spec, mesh.RawNode{Name: n.name, PodCIDRs: []string{n.podCIDR.String()}, InternalIPs: []string{n.under.String()}})
	}
	specPath := filepath.Join(dir, "nodes.json")
	annDir := filepath.Join(dir, "annotations")
	if err := os.MkdirAll(annDir, 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	// Capture the underlay for the whole exchange.
	pcap := filepath.Join(dir, "underlay.pcap")
	capture := startCapture(t, ul, "br0", pcap)

	start := time.Now()
	for _, n := range nodes {
		env, err := childEnv("node", nodeConfig{
			Name: n.name, Interface: wgIface, ListenPort: listenPort, KeyFile: n.keyFile,
			Spec: specPath, AnnDir: annDir, ClusterCIDRs: dataplane.DefaultClusterCIDRs,
		})
		if err != nil {
			t.Fatal(err)
		}
		n.agent = n.ns.Start(t, n.name+" agent", env, self)
	}

	// Each device gets the other as its peer, with a handshake once
	// traffic flows.
	for i, n := range nodes {
		other := nodes[1-i]
		netnstest.Eventually(t, 20*time.Second, n.name+" peers with "+other.name, func() error {
			if n.agent.Exited() {
				t.Fatalf("%s agent exited early:\n%s", n.name, n.agent.Output())
			}
			dump, err := wgShow(n, "dump")
			if err != nil {
				return err
			}
			want := fmt.Sprintf("%s:%d\t%s", other.under, listenPort, other.podCIDR)
			if !strings.Contains(dump, want) {
				return fmt.Errorf("no peer line with %q in:\n%s", want, dump)
			}
			return nil
		})
		// Pods attach once the agent made the bridge.
		netnstest.Eventually(t, 10*time.Second, n.name+" bridge", func() error {
			_, err := n.ns.Run("ip", "link", "show", dataplane.DefaultBridge)
			return err
		})
		netnstest.Veth(t, n.pod, "eth0", netip.PrefixFrom(n.podIP, 24), n.ns, "vpod", netip.Prefix{})
		n.ns.MustRun(t, "ip", "link", "set", "vpod", "master", dataplane.DefaultBridge)
		n.pod.MustRun(t, "ip", "link", "set", "eth0", "mtu", "1420")
		n.pod.MustRun(t, "ip", "route", "add", "default", "via", n.gw.String())
	}
	t.Logf("both nodes peered %.1fs after start", time.Since(start).Seconds())

	// No-NAT check: node B's pod must see node A's pod address.
	podCap := filepath.Join(dir, "pod-b.pcap")
	podCapture := startCapture(t, nodes[1].pod, "eth0", podCap)

	a, b := nodes[0], nodes[1]
	// Gateway to gateway: the route's source address makes a plain ping
	// leave from 10.244.1.1; -I pins it as well.
	ping(t, a.ns, "-I", a.gw.String(), b.gw.String())
	ping(t, b.ns, "-I", b.gw.String(), a.gw.String())
	ping(t, a.ns, b.gw.String())
	// Pod to pod: forwarded on both nodes despite FORWARD policy DROP.
	ping(t, a.pod, b.podIP.String())
	ping(t, b.pod, a.podIP.String())
	// Pod to outside the cluster (the underlay router): masqueraded.
	ping(t, a.pod, "198.51.100.1")

	stopCapture(t, podCapture)
	stopCapture(t, capture)

	// Pod B saw pod A's own address: pod-to-pod is not NATed.
	podLines := readCapture(t, podCap)
	if !containsLine(podLines, fmt.Sprintf("IP %s > %s: ICMP echo request", a.podIP, b.podIP)) {
		t.Errorf("pod B did not see echo requests from %s (NAT on the pod path?):\n%s", a.podIP, strings.Join(podLines, "\n"))
	}

	// The underlay carried WireGuard UDP and the masqueraded ping, and
	// never a pod address.
	ulLines := readCapture(t, pcap)
	wgUDP := regexp.MustCompile(`IP 198\.51\.100\.1[12]\.51820 > 198\.51\.100\.1[12]\.51820: UDP`)
	var udp int
	for _, l := range ulLines {
		if strings.Contains(l, "10.244.") {
			t.Errorf("pod address on the underlay: %s", l)
		}
		if wgUDP.MatchString(l) {
			udp++
		}
	}
	if udp == 0 {
		t.Errorf("no WireGuard UDP on the underlay; capture:\n%s", strings.Join(ulLines, "\n"))
	}
	if !containsLine(ulLines, fmt.Sprintf("IP %s > 198.51.100.1: ICMP echo request", a.under)) {
		t.Errorf("pod ping to 198.51.100.1 was not masqueraded to %s", a.under)
	}
	t.Logf("underlay capture: %d packets, %d WireGuard UDP, 0 with a pod address", len(ulLines), udp)

	for i, n := range nodes {
		other := nodes[1-i]
		out, err := wgShow(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("[%s] wg show %s:\n%s", n.name, wgIface, out)
		otherKey, err := wgdev.LoadKey(other.keyFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"interface: " + wgIface,
			fmt.Sprintf("listening port: %d", listenPort),
			"peer: " + otherKey.PublicKey().String(),
			fmt.Sprintf("endpoint: %s:%d", other.under, listenPort),
			"allowed ips: " + other.podCIDR.String(),
			"latest handshake: ",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("[%s] wg show lacks %q", n.name, want)
			}
		}

		routes := n.ns.MustRun(t, "ip", "route", "show", "proto", strconv.Itoa(dataplane.DefaultRouteProtocol))
		t.Logf("[%s] ip route show proto %d: %s", n.name, dataplane.DefaultRouteProtocol, strings.TrimSpace(routes))
		if want := fmt.Sprintf("%s dev %s scope link src %s", other.podCIDR, wgIface, n.gw); !strings.Contains(routes, want) {
			t.Errorf("[%s] routes lack %q", n.name, want)
		}

		// Our accept rules sit in iptables' FORWARD chain with policy
		// DROP, and their counters show they let the pod traffic pass.
		fwd := n.ns.MustRun(t, "iptables", "-L", "FORWARD", "-v", "-x", "-n")
		t.Logf("[%s] iptables -L FORWARD -v -x -n:\n%s", n.name, fwd)
		if !strings.Contains(fwd, "policy DROP") {
			t.Errorf("[%s] FORWARD policy is not DROP", n.name)
		}
		if pk := acceptedPackets(fwd, dataplane.DefaultBridge, wgIface); pk == 0 {
			t.Errorf("[%s] no packet went through our bridge->%s accept rule", n.name, wgIface)
		}
		if pk := acceptedPackets(fwd, wgIface, dataplane.DefaultBridge); pk == 0 {
			t.Errorf("[%s] no packet went through our %s->bridge accept rule", n.name, wgIface)
		}

		// wireguard-go's TUN offloads stayed on.
		k := n.ns.MustRun(t, "ethtool", "-k", wgIface)
		if !strings.Contains(k, "tcp-segmentation-offload: on") {
			t.Errorf("[%s] TSO is off on %s:\n%s", n.name, wgIface, k)
		}
		for _, l := range strings.Split(k, "\n") {
			if strings.Contains(l, "segmentation-offload:") || strings.Contains(l, "receive-offload:") {
				t.Logf("[%s] ethtool -k %s: %s", n.name, wgIface, strings.TrimSpace(l))
			}
		}
	}

	// SIGTERM: clean shutdown, device and socket gone.
	for _, n := range nodes {
		if err := n.agent.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("%s agent: %v\n%s", n.name, err, n.agent.Output())
			continue
		}
		if !strings.Contains(n.agent.Output(), shutdownMessage) {
			t.Errorf("%s agent did not report a clean shutdown:\n%s", n.name, n.agent.Output())
		}
		if _, err := n.ns.Run("ip", "link", "show", wgIface); err == nil {
			t.Errorf("%s: %s still exists after shutdown", n.name, wgIface)
		}
	}
	t.Logf("total %.1fs", time.Since(start).Seconds())
}

// wgShow runs the stock wg tool inside the node agent's network and mount
// namespaces, where its UAPI socket lives.
func wgShow(n *testNode, args ...string) (string, error) {
	argv := append([]string{"--target", strconv.Itoa(n.agent.Pid()), "--mount", "--net", "wg", "show", wgIface}, args...)
	out, err := exec.Command("nsenter", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("wg show: %w: %s", err, out)
	}
	return string(out), nil
}

func ping(t *testing.T, ns *netnstest.NS, args ...string) {
	t.Helper()
	argv := append([]string{"ping", "-c", "3", "-i", "0.2", "-W", "2"}, args...)
	out, err := ns.Run(argv...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("[%s] %s: %s", ns.Name, strings.Join(argv, " "), lastNonEmptyLines(out, 2))
}

func startCapture(t *testing.T, ns *netnstest.NS, iface, file string) *netnstest.Proc {
	t.Helper()
	// -Z root: tcpdump would otherwise drop to a user that cannot write
	// into the test's temp dir.
	p := ns.Start(t, "tcpdump "+iface, nil, "tcpdump", "-n", "-i", iface, "-U", "-Z", "root", "-s", "256", "-w", file)
	netnstest.Eventually(t, 10*time.Second, "tcpdump on "+iface+" listening", func() error {
		if p.Exited() {
			t.Fatalf("tcpdump exited: %s", p.Output())
		}
		if !strings.Contains(p.Output(), "listening on") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return p
}

func stopCapture(t *testing.T, p *netnstest.Proc) {
	t.Helper()
	// tcpdump exits with status 0 on SIGINT after flushing the file.
	if err := p.Stop(syscall.SIGINT, 10*time.Second); err != nil {
		t.Fatalf("stop %s: %v\n%s", p.Name, err, p.Output())
	}
}

func readCapture(t *testing.T, file string) []string {
	t.Helper()
	out, err := exec.Command("tcpdump", "-n", "-r", file).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v", file, err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func containsLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// acceptedPackets reads the packet counter of the ACCEPT rule from in to out
// in `iptables -L -v -x -n` output.
func acceptedPackets(listing, in, out string) int {
	for _, l := range strings.Split(listing, "\n") {
		f := strings.Fields(l)
		// pkts bytes target prot opt in out source destination ...
		if len(f) >= 7 && f[2] == "ACCEPT" && f[5] == in && f[6] == out {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	return 0
}

func lastNonEmptyLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, " | ")
}
