package datapath

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
)

var wgUDPLine = regexp.MustCompile(`IP 198\.51\.100\.1\d\.51820 > 198\.51\.100\.1\d\.51820: UDP`)

// TestFailClosed captures the underlay while pods and hosts keep sending to
// pod addresses through every state the issue names: agent started but not
// reconciled yet, agent SIGKILLed and restarted, a node excluded for a bad
// key, and (defence in depth) the catch-all route deleted by hand. Not one
// frame may show a pod address. A control capture first shows that the
// same traffic does leak on a node without the agent, so the capture would
// see a leak if there were one.
func TestFailClosed(t *testing.T) {
	c := newCluster(t, nodeSpec{}, nodeSpec{})
	a, b := c.nodes[0], c.nodes[1]
	start := time.Now()

	// Control: no agent has run; the host's default route carries a ping
	// to a pod address in the clear.
	ctlPcap := filepath.Join(c.dir, "control.pcap")
	ctl := startCapture(t, c.ul, "br0", ctlPcap)
	a.ns.Run("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", b.podIP.String())
	stopCapture(t, ctl)
	if leaked := podAddrLines(readCapture(t, ctlPcap)); len(leaked) == 0 {
		t.Fatal("control: a ping to a pod address without any agent did not show on the underlay; the capture cannot see leaks")
	} else {
		t.Logf("control without agent: %d frames with a pod address, e.g. %s", len(leaked), leaked[0])
	}

	pcap := filepath.Join(c.dir, "underlay.pcap")
	capture := startCapture(t, c.ul, "br0", pcap)

	// Pods exist before the agent ever ran (a worst case: the CNI plugin
	// refuses ADD until the agent's guard exists).
	for _, n := range c.nodes {
		c.preBridge(n)
		c.attachPod(n, 1420)
	}

	t.Log("phase 1: agents started, node list not synced yet")
	for _, n := range c.nodes {
		took := c.startAgent(n)
		t.Logf("%s fail-closed %s after start", n.name, took.Round(time.Millisecond))
	}
	podAB := startPinger(t, a.pod, b.podIP.String())
	podBA := startPinger(t, b.pod, a.podIP.String())
	// The host to a remote pod, from its gateway address (pinned: an
	// unpinned ping gives up at once on "No route to host").
	hostAB := startPinger(t, a.ns, b.podIP.String(), "-I", a.gw.String())
	time.Sleep(1500 * time.Millisecond)
	for _, n := range c.nodes {
		if strings.Contains(n.agent.Output(), firstReconcileMessage) {
			t.Fatalf("%s reconciled before the node list existed", n.name)
		}
	}
	if out, _ := a.ns.Run("ip", "route", "get", b.podIP.String()); !strings.Contains(out, "unreachable") && !strings.Contains(out, "No route to host") {
		t.Errorf("before the first reconcile %s is not unreachable on %s: %s", b.podIP, a.name, out)
	}
	if n := pingReplies(podAB) + pingReplies(hostAB); n != 0 {
		t.Errorf("%d replies from a remote pod before any peer existed", n)
	}

	c.writeSpec()
	for i, n := range c.nodes {
		n.waitOutput(t, firstReconcileMessage, 10*time.Second)
		c.waitPeered(n, c.nodes[1-i])
	}
	for _, p := range []*netnstest.Proc{podAB, podBA, hostAB} {
		waitReplies(t, p, pingReplies(p)+3, 10*time.Second)
	}
	t.Logf("phase 1 done: mesh up %.1fs after start, pods reach each other", time.Since(start).Seconds())

	t.Log("phase 2: agent of node-a SIGKILLed, pods keep sending")
	c.killAgent(a)
	killed := time.Now()
	before := pingReplies(podAB)
	time.Sleep(1500 * time.Millisecond)
	if got := pingReplies(podAB) - before; got > 1 {
		t.Errorf("%d replies while node-a's agent was dead: the data path cannot work without wireguard-go", got)
	}
	if link := a.ns.MustRun(t, "ip", "link", "show", wgIface); !strings.Contains(link, "NO-CARRIER") {
		t.Errorf("%s while the agent is dead: %s", wgIface, link)
	}
	c.startAgent(a)
	waitReplies(t, podAB, pingReplies(podAB)+3, 10*time.Second)
	t.Logf("phase 2 done: pod pings flow again %s after the kill (1.5s of it dead on purpose)", time.Since(killed).Round(time.Millisecond))
	for _, want := range []string{"reattached=true", "restored_peers=1"} {
		if !strings.Contains(a.agent.Output(), want) {
			t.Errorf("restarted agent does not log %q", want)
		}
	}

	t.Log("phase 3: node-c joins, then its key turns bad and it is excluded")
	keyC, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	nodeC := mesh.RawNode{Name: "node-c", PodCIDRs: []string{"10.244.3.0/24"}, InternalIPs: []string{"198.51.100.13"}}
	c.setAnnotations("node-c", map[string]string{mesh.AnnotationPublicKey: keyC.PublicKey().String(), mesh.AnnotationEndpoint: "198.51.100.13:51820"})
	c.writeSpec(nodeC)
	waitRoute(t, a, "10.244.3.2", "dev "+wgIface)
	podAC := startPinger(t, a.pod, "10.244.3.2")
	hostAC := startPinger(t, a.ns, "10.244.3.2", "-I", a.gw.String())
	time.Sleep(500 * time.Millisecond) // into the tunnel (no answer: node-c is not real)
	c.setAnnotations("node-c", map[string]string{mesh.AnnotationPublicKey: "not-a-key", mesh.AnnotationEndpoint: "198.51.100.13:51820"})
	waitRoute(t, a, "10.244.3.2", "unreachable")
	a.waitOutput(t, "node excluded from the mesh", 5*time.Second)
	time.Sleep(1 * time.Second)
	if n := pingReplies(podAC) + pingReplies(hostAC); n != 0 {
		t.Errorf("%d replies from a node that does not exist", n)
	}

	t.Log("phase 4: the catch-all route removed by hand; only the guard is left")
	guardBefore := guardDrops(t, a)
	delRoute := []string{"ip", "route", "del", "unreachable", "10.244.0.0/16", "proto", strconv.Itoa(dataplane.DefaultRouteProtocol),
		"metric", strconv.Itoa(dataplane.FailClosedMetric)}
	a.ns.MustRun(t, delRoute...)
	// Delete it again should the agent's resync (2s) put it back before
	// the pingers (every 50ms) had a packet dropped.
	for deadline := time.Now().Add(10 * time.Second); guardDrops(t, a) == guardBefore; {
		if time.Now().After(deadline) {
			t.Fatal("with the catch-all route gone the guard dropped nothing: traffic to 10.244.3.2 left another way or stopped")
		}
		time.Sleep(100 * time.Millisecond)
		a.ns.Run(delRoute...)
	}
	time.Sleep(300 * time.Millisecond)
	dropped := guardDrops(t, a) - guardBefore
	t.Logf("guard on node-a dropped %d packets while the catch-all route was missing", dropped)
	// The agent's resync (2s) puts the route back.
	waitRoute(t, a, "10.244.3.2", "unreachable")

	// Pods B→A kept working across all of it.
	waitReplies(t, podBA, pingReplies(podBA)+3, 10*time.Second)
	stopCapture(t, capture)
	lines := readCapture(t, pcap)
	leaked := podAddrLines(lines)
	udp := 0
	for _, l := range lines {
		if wgUDPLine.MatchString(l) {
			udp++
		}
	}
	for i, l := range leaked {
		if i == 20 {
			t.Errorf("... %d more", len(leaked)-20)
			break
		}
		t.Errorf("pod address in the clear: %s", l)
	}
	if udp == 0 {
		t.Error("no WireGuard UDP on the underlay: the capture saw nothing")
	}
	t.Logf("underlay capture over %.1fs: %d frames, %d WireGuard UDP, %d with a pod address; pings sent: pod a→b %d, pod b→a %d, host a→b %d, pod a→c %d, host a→c %d",
		time.Since(start).Seconds(), len(lines), udp, len(leaked),
		pingsSent(t, podAB), pingsSent(t, podBA), pingsSent(t, hostAB), pingsSent(t, podAC), pingsSent(t, hostAC))
}

// TestTCPStreamSurvivesAgentRestart streams pod A → pod B while first A's
// and then B's agent is SIGKILLed and started again half a second later;
// every byte must arrive intact, and the stalls are reported.
func TestTCPStreamSurvivesAgentRestart(t *testing.T) {
	c := newCluster(t, nodeSpec{}, nodeSpec{})
	a, b := c.nodes[0], c.nodes[1]
	c.writeSpec()
	for _, n := range c.nodes {
		c.startAgent(n)
	}
	for i, n := range c.nodes {
		c.waitPeered(n, c.nodes[1-i])
		c.attachPod(n, 1420)
	}
	pcap := filepath.Join(c.dir, "underlay.pcap")
	capture := startCapture(t, c.ul, "br0", pcap)

	wait := startTCP(t, a.pod, b.pod, tcpConfig{
		Addr: netip4(b.podIP.String(), 5001), Rate: 1 << 20, Duration: 7 * time.Second, Chunk: 8 << 10,
		Seed: 7, Timeout: 60 * time.Second,
	})
	var restarts []string
	// Far enough apart that TCP's backoff after the first outage does
	// not run into the second.
	for _, n := range []*testNode{a, b} {
		time.Sleep(2500 * time.Millisecond)
		c.killAgent(n)
		down := time.Now()
		time.Sleep(500 * time.Millisecond)
		took := c.startAgent(n)
		n.waitOutput(t, "wireguard device up", 10*time.Second)
		restarts = append(restarts, fmt.Sprintf("%s: killed, restarted after %s, fail-closed in %s, device up (re-attached, peers restored) %s after the kill",
			n.name, 500*time.Millisecond, took.Round(time.Millisecond), time.Since(down).Round(time.Millisecond)))
		for _, want := range []string{"reattached=true", "restored_peers=1"} {
			if !strings.Contains(n.agent.Output(), want) {
				t.Errorf("%s: restarted agent does not log %q", n.name, want)
			}
		}
	}
	_, sink := wait()
	for _, r := range restarts {
		t.Log(r)
	}
	t.Logf("stream: %d bytes in %s, sha256 %s… intact; longest stall %s at +%s; stalls over %s: %v",
		sink.Bytes, sink.Elapsed.Round(time.Millisecond), sink.SHA256[:16], sink.MaxGap.Round(time.Millisecond),
		sink.MaxGapAt.Round(time.Millisecond), stallThreshold, sink.Stalls)
	// Half a second dead plus TCP's retransmission backoff: ~0.7 s on
	// an idle machine, several seconds on a loaded one. A peer stuck on
	// the dead incarnation's session (no handshake from the restarted
	// agent) stalls 25 s and more.
	if sink.MaxGap > 12*time.Second {
		t.Errorf("longest stall %s: the restart did not re-establish the session promptly", sink.MaxGap)
	}
	stopCapture(t, capture)
	lines := readCapture(t, pcap)
	if leaked := podAddrLines(lines); len(leaked) > 0 {
		t.Errorf("%d frames with a pod address on the underlay, e.g. %s", len(leaked), leaked[0])
	}
	t.Logf("underlay capture: %d frames, 0 with a pod address", len(lines))
}

// TestMTUAndMSSClamp: nodes A and B have a jumbo underlay (9000 → 8920 on
// wgmesh0 and the bridge) and C a 1280 one (→ 1200). Jumbo frames cross
// A↔B; a bulk TCP transfer between A's pod and C's pod succeeds both ways
// although C's pod still has MTU 1420 (larger than its node's 1200, as a pod
// made before the node's MTU changed would): the MSS clamp on C's wg path
// is what keeps segments small enough for C's underlay.
func TestMTUAndMSSClamp(t *testing.T) {
	c := newCluster(t, nodeSpec{ulMTU: 9000}, nodeSpec{ulMTU: 9000}, nodeSpec{ulMTU: 1280})
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	c.writeSpec()
	for _, n := range c.nodes {
		c.startAgent(n)
	}
	for _, pair := range [][2]*testNode{{a, b}, {b, a}, {a, cc}, {cc, a}} {
		c.waitPeered(pair[0], pair[1])
	}
	wantMTU := map[*testNode]int{a: 8920, b: 8920, cc: 1200}
	for _, n := range c.nodes {
		for _, link := range []string{wgIface, dataplane.DefaultBridge} {
			out := n.ns.MustRun(t, "ip", "link", "show", link)
			if !strings.Contains(out, fmt.Sprintf(" mtu %d ", wantMTU[n])) {
				t.Errorf("%s: %s with underlay %d: want mtu %d:\n%s", n.name, link, n.ulMTU, wantMTU[n], out)
			}
		}
		t.Logf("%s: underlay mtu %d → %s and %s mtu %d", n.name, n.ulMTU, wgIface, dataplane.DefaultBridge, wantMTU[n])
	}
	c.attachPod(a, 8920)
	c.attachPod(b, 8920)
	c.attachPod(cc, 1420) // stale: larger than node-c's 1200

	// Jumbo: an 8920-byte packet, don't fragment, pod A → pod B.
	ping(t, a.pod, "-M", "do", "-s", strconv.Itoa(8920-28), b.podIP.String())
	// C's underlay really is the bottleneck: 1420 bytes inside (1500
	// outside) do not reach C, 1200 (1280 outside) do.
	if out, err := a.pod.Run("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", strconv.Itoa(1420-28), cc.podIP.String()); err == nil {
		t.Fatalf("1420-byte packets reached node-c over a 1280 underlay; the test path has no bottleneck:\n%s", out)
	}
	ping(t, a.pod, "-M", "do", "-s", strconv.Itoa(1200-28), cc.podIP.String())

	// The SYN that reaches C's pod carries the clamped MSS.
	synPcap := filepath.Join(c.dir, "pod-c.pcap")
	synCap := startCapture(t, cc.pod, "eth0", synPcap)
	const size = 8 << 20
	for i, dir := range [][2]*testNode{{a, cc}, {cc, a}} {
		src, dst := dir[0], dir[1]
		start := time.Now()
		wait := startTCP(t, src.pod, dst.pod, tcpConfig{
			Addr: netip4(dst.podIP.String(), 5001+i), Bytes: size, Chunk: 64 << 10, Seed: uint64(i + 1), Timeout: 20 * time.Second,
		})
		_, sink := wait()
		el := time.Since(start)
		t.Logf("bulk TCP %s pod → %s pod: %d bytes intact in %s (%.1f Mbit/s), longest stall %s",
			src.name, dst.name, sink.Bytes, el.Round(time.Millisecond), float64(sink.Bytes)*8/el.Seconds()/1e6, sink.MaxGap.Round(time.Millisecond))
	}
	stopCapture(t, synCap)
	// Incoming only: the SYN of A's connection and the SYN-ACK of C's.
	out, err := runTcpdump("-n", "-v", "-r", synPcap, "dst host "+cc.podIP.String()+" and tcp[tcpflags] & tcp-syn != 0")
	if err != nil {
		t.Fatal(err)
	}
	mss := regexp.MustCompile(`mss (\d+)`).FindAllStringSubmatch(out, -1)
	if len(mss) != 2 {
		all, _ := runTcpdump("-n", "-r", synPcap)
		t.Fatalf("want the 2 incoming SYNs with an MSS option in node-c's pod:\n%s\nall:\n%s", out, all)
	}
	for _, m := range mss {
		if m[1] != "1160" {
			t.Errorf("SYN in node-c's pod with mss %s, want 1160 (node-c's 1200 minus 40)", m[1])
		}
	}
	t.Logf("SYN and SYN-ACK reaching node-c's pod (MTU 1420; its own SYNs say 1380, node-a's pod's 8880): %d with mss 1160", len(mss))
	fwd := cc.ns.MustRun(t, "nft", "list", "chain", "inet", dataplane.DefaultTable, dataplane.ChainForward)
	clamped := 0
	for _, l := range strings.Split(fwd, "\n") {
		if strings.Contains(l, "maxseg size set rt mtu") {
			clamped += counterPackets(l)
		}
	}
	if clamped == 0 {
		t.Errorf("node-c's MSS clamp rules matched nothing:\n%s", fwd)
	}
	t.Logf("node-c: MSS clamp rules matched %d SYNs", clamped)
}

// waitReplies waits until a running ping has reported at least n replies.
func waitReplies(t *testing.T, p *netnstest.Proc, n int, timeout time.Duration) {
	t.Helper()
	netnstest.Eventually(t, timeout, p.Name+" replies", func() error {
		if got := pingReplies(p); got < n {
			return fmt.Errorf("%d replies, want %d", got, n)
		}
		return nil
	})
}

// pingsSent stops a running ping (SIGINT makes it print its summary) and
// returns how many echo requests it sent.
func pingsSent(t *testing.T, p *netnstest.Proc) int {
	t.Helper()
	p.Stop(syscall.SIGINT, 5*time.Second)
	o := pingout.Parse(p.Output())
	if !o.Summary {
		t.Errorf("%s printed no summary:\n%s", p.Name, p.Output())
		return 0
	}
	return o.Sent
}

// waitRoute waits until `ip route get dst` on n mentions want.
func waitRoute(t *testing.T, n *testNode, dst, want string) {
	t.Helper()
	netnstest.Eventually(t, 10*time.Second, fmt.Sprintf("%s: route to %s %q", n.name, dst, want), func() error {
		out, _ := n.ns.Run("ip", "route", "get", dst)
		if want == "unreachable" && strings.Contains(out, "No route to host") {
			return nil
		}
		if !strings.Contains(out, want) {
			return errors.New(strings.TrimSpace(out))
		}
		return nil
	})
}

// guardDrops sums the packet counters of the guard's drop rules on n.
func guardDrops(t *testing.T, n *testNode) int {
	t.Helper()
	out := n.ns.MustRun(t, "nft", "list", "table", "inet", dataplane.DefaultGuardTable)
	total := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " drop") {
			total += counterPackets(l)
		}
	}
	return total
}

var counterRe = regexp.MustCompile(`counter packets (\d+)`)

func counterPackets(line string) int {
	m := counterRe.FindStringSubmatch(line)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func netip4(addr string, port int) string { return fmt.Sprintf("%s:%d", addr, port) }

// runTcpdump runs tcpdump on a capture file (no namespace needed).
func runTcpdump(args ...string) (string, error) {
	out, err := exec.Command("tcpdump", args...).Output()
	if err != nil {
		return string(out), fmt.Errorf("tcpdump %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}
