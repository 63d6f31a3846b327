package datapath

import (
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
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
	runDir  string // the agent's run-dir (state file)
	ulMTU   int    // underlay MTU, 0 = 1500
	ulPort  string // its port on the underlay bridge
	agent   *netnstest.Proc
}

// TestTwoNodeDatapath runs two nodes' data paths over a veth underlay, with
// iptables FORWARD policy DROP on both, and checks that the bridge gateways
// and pods reach each other only through WireGuard.
func TestTwoNodeDatapath(t *testing.T) {
	c := newCluster(t, nodeSpec{}, nodeSpec{})
	nodes := c.nodes
	dir := c.dir
	// An existing key, as left by a previous run, exercises loading.
	if _, _, err := wgdev.LoadOrCreateKey(nodes[0].keyFile); err != nil {
		t.Fatal(err)
	}
	c.writeSpec()

	// Capture the underlay for the whole exchange.
	pcap := filepath.Join(dir, "underlay.pcap")
	capture := startCapture(t, c.ul, "br0", pcap)

	start := time.Now()
	for _, n := range nodes {
		c.startAgent(n)
	}

	// Each device gets the other as its peer, with a handshake once
	// traffic flows.
	for i, n := range nodes {
		c.waitPeered(n, nodes[1-i])
		c.attachPod(n, 1420)
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
		t.Errorf("pod ping to 198.51.100.1 was not masqueraded to %s; capture:\n%s", a.under, strings.Join(ulLines, "\n"))
	}
	t.Logf("underlay capture: %d packets, %d WireGuard UDP, 0 with a pod address", len(ulLines), udp)

	for i, n := range nodes {
		other := nodes[1-i]
		out, err := wgShow(n.agent)
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

	// SIGTERM: clean shutdown, UAPI socket gone; the persistent TUN,
	// its routes and the fail-closed guard stay for the next agent.
	for _, n := range nodes {
		if err := n.agent.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("%s agent: %v\n%s", n.name, err, n.agent.Output())
			continue
		}
		if !strings.Contains(n.agent.Output(), shutdownMessage) {
			t.Errorf("%s agent did not report a clean shutdown:\n%s", n.name, n.agent.Output())
		}
		link, err := n.ns.Run("ip", "link", "show", wgIface)
		if err != nil {
			t.Errorf("%s: persistent %s gone after shutdown: %v", n.name, wgIface, err)
		} else if !strings.Contains(link, "NO-CARRIER") {
			t.Errorf("%s: %s has a carrier with no agent attached:\n%s", n.name, wgIface, link)
		}
		routes := n.ns.MustRun(t, "ip", "route", "show", "proto", strconv.Itoa(dataplane.DefaultRouteProtocol))
		for _, want := range []string{"unreachable 10.244.0.0/16", nodes[1-indexOf(nodes, n)].podCIDR.String() + " dev " + wgIface} {
			if !strings.Contains(routes, want) {
				t.Errorf("%s: route %q gone after shutdown:\n%s", n.name, want, routes)
			}
		}
		if _, err := n.ns.Run("nft", "list", "table", "inet", dataplane.DefaultGuardTable); err != nil {
			t.Errorf("%s: guard table gone after shutdown: %v", n.name, err)
		}
	}

	t.Logf("total %.1fs", time.Since(start).Seconds())
}

func indexOf(nodes []*testNode, n *testNode) int {
	for i, x := range nodes {
		if x == n {
			return i
		}
	}
	return -1
}

// wgShow runs the stock wg tool inside the node agent's network and mount
// namespaces, where its UAPI socket lives.
func wgShow(agent *netnstest.Proc, args ...string) (string, error) {
	argv := append([]string{"--target", strconv.Itoa(agent.Pid()), "--mount", "--net", "wg", "show", wgIface}, args...)
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
	// --immediate-mode: hand each packet over at once, not per filled
	// ring block, so a short capture stopped by SIGINT loses nothing.
	p := ns.Start(t, "tcpdump "+iface, nil, "tcpdump", "-n", "-i", iface, "--immediate-mode", "-U", "-Z", "root", "-s", "256", "-w", file)
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
