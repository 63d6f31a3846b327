package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/integration/internal/reexec"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// The checked TCP stream's ends run as this test binary re-executed inside
// pods; init dispatches before TestMain (which builds and checks for root).
const rolePrefix = "WGMESH_E2E"

func init() {
	reexec.Dispatch(rolePrefix, reexec.Roles{"tcpsink": netnstest.RunSink, "tcpsource": netnstest.RunSource})
}

// TestHardening proves the fail-closed and restart-proof promises on the lab
// (real apiserver, real agent binary, persistent per-node run-dirs):
//
//   - the underlay is captured while pods and a node keep pinging pod
//     addresses through an agent SIGKILL, its start-up while the apiserver
//     is down (no node list: the data path comes back from the agent's state
//     file alone) and a node's exclusion for a bad key: no frame may show a
//     pod address;
//   - a checked TCP stream between pods on two nodes runs through
//     kill-agent + start-agent of both ends and arrives intact; the stalls
//     are reported;
//   - `wgmesh-agent uninstall` refuses while an agent runs and afterwards
//     leaves nothing of wgmesh on the node.
func TestHardening(t *testing.T) {
	l := newLab(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	requireMatrix(t, ctx, l)
	nodes := l.State().NodeNames()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	p1, p2, p3 := firstPod(t, l, n1), firstPod(t, l, n2), firstPod(t, l, n3)

	t.Run("NoPlaintextThroughKillStartupAndExclusion", func(t *testing.T) {
		ns, br := l.Underlay()
		pcap := filepath.Join(t.TempDir(), "underlay.pcap")
		capt := startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", ns}, "-i", br, "-s", "128", "-w", pcap))
		start := time.Now()

		gw1 := gateway(t, p1.IP)
		pod12 := startPinger(t, l, p1, p2.IP)
		pod21 := startPinger(t, l, p2, p1.IP)
		host12 := startHostPinger(t, l, n1, p2.IP, gw1)
		waitReplies(t, pod12, 3)

		// SIGKILL, then start-up without the apiserver: the restarted
		// agent has no node list and must still bring the data path back
		// from its state file, sending nothing in the clear meanwhile.
		if err := l.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		if err := l.KillAgent(n1); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		time.Sleep(time.Second)
		if err := l.StartAgent(n1); err != nil {
			t.Fatal(err)
		}
		back := waitReplies(t, pod12, replies(pod12)+3)
		t.Logf("%s: apiserver stopped, agent killed, started again 1s later: pod pings flow again %s after the kill (%s after the start)",
			n1, time.Since(killed).Round(time.Millisecond), back.Round(time.Millisecond))
		if err := l.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		log := agentLog(t, l, n1)
		for _, want := range []string{"restoring the previous run's peers", "reattached=true"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s agent log lacks %q", n1, want)
			}
		}

		// Exclusion: node3's key turns to garbage (its agent stopped
		// first, else it would repair the annotation).
		pod13 := startPinger(t, l, p1, p3.IP)
		host13 := startHostPinger(t, l, n1, p3.IP, gw1)
		waitReplies(t, pod13, 3)
		if err := l.KillAgent(n3); err != nil {
			t.Fatal(err)
		}
		admin, err := l.Admin()
		if err != nil {
			t.Fatal(err)
		}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"not-a-key"}}}`, mesh.AnnotationPublicKey)
		if _, err := admin.CoreV1().Nodes().Patch(ctx, n3, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		took, ok := lab.WaitFor(ctx, 30*time.Second, 200*time.Millisecond, func() bool {
			out, _ := l.Exec(ctx, n1, "ip", "route", "get", p3.IP)
			return strings.Contains(string(out), "unreachable") || strings.Contains(string(out), "No route to host")
		})
		if !ok {
			t.Fatalf("%s still routes %s %s after %s's key went bad", n1, p3.IP, took, n3)
		}
		t.Logf("%s excluded by %s after %s; %s is unreachable there", n3, n1, took.Round(time.Millisecond), p3.IP)
		time.Sleep(time.Second) // pingers keep sending to the excluded node

		// node2's pod was never disturbed.
		waitReplies(t, pod21, replies(pod21)+3)
		capt.stop()
		sent := map[string]int{}
		for name, p := range map[string]*pinger{"pod1→pod2": pod12, "pod2→pod1": pod21, "node1→pod2": host12, "pod1→pod3": pod13, "node1→pod3": host13} {
			sent[name] = p.stop(t)
		}

		frames, err := readPcap(pcap)
		if err != nil {
			t.Fatal(err)
		}
		bad, wg := podAddressFrames(frames, l)
		t.Logf("underlay capture over %s: %d frames, %d WireGuard UDP, %d with a pod address; echo requests sent: %v",
			time.Since(start).Round(time.Millisecond), len(frames), wg, len(bad), sent)
		if len(bad) > 0 {
			if len(bad) > 20 {
				bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
			}
			t.Errorf("pod addresses in the clear on the underlay:\n%s", strings.Join(bad, "\n"))
		}
		if wg == 0 {
			t.Error("no WireGuard frames captured: the capture saw nothing")
		}
	})

	t.Run("TCPStreamThroughKillAndStart", func(t *testing.T) {
		cfg := netnstest.StreamConfig{Addr: p2.IP + ":5001", Rate: 1 << 20, Duration: 9 * time.Second, Chunk: 8 << 10, Seed: 42, Timeout: 90 * time.Second}
		sink := startRole(t, l, p2, "tcpsink", cfg, netnstest.SinkListening)
		source := startRole(t, l, p1, "tcpsource", cfg, "")
		var restarts []string
		// Far enough apart that TCP's backoff after the first outage
		// does not run into the second.
		for _, n := range []string{n2, n1} {
			time.Sleep(3 * time.Second)
			if err := l.KillAgent(n); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if err := l.StartAgent(n); err != nil {
				t.Fatal(err)
			}
			restarts = append(restarts, n)
		}
		src := roleResult(t, source, cfg.Timeout)
		got := roleResult(t, sink, cfg.Timeout)
		if src.Bytes != got.Bytes || src.SHA256 != got.SHA256 {
			t.Fatalf("stream corrupted: sent %d bytes sha256 %s, received %d bytes sha256 %s", src.Bytes, src.SHA256, got.Bytes, got.SHA256)
		}
		t.Logf("pod %s/%s → pod %s/%s: %d bytes intact (sha256 %s…) in %s through kill-agent + start-agent (0.5s down) of %v; longest stall %s at +%s; stalls over %s: %v",
			p1.Node, p1.Pod, p2.Node, p2.Pod, got.Bytes, got.SHA256[:16], got.Elapsed.Round(time.Millisecond), restarts,
			got.MaxGap.Round(time.Millisecond), got.MaxGapAt.Round(time.Millisecond), netnstest.StallThreshold, got.Stalls)
		if got.MaxGap > maxRestartStall {
			t.Errorf("longest stall %s: a restart did not re-establish the session promptly", got.MaxGap)
		}
	})

	t.Run("SmallUnderlayNode", func(t *testing.T) {
		// A node whose underlay MTU is 1280 (no segmentation offloads on
		// its underlay port, so the 1280 limit holds for every frame as
		// on a real link; a veth would pass GSO packets whole).
		n, err := l.AddNode(ctx, lab.NodeOptions{Pods: 1, MTU: 1280})
		if err != nil {
			t.Fatal(err)
		}
		ns, _ := l.Underlay()
		if out, err := exec.Command("ip", "netns", "exec", ns, "ethtool", "-K", n.Link, "gso", "off", "tso", "off", "tx-udp-segmentation", "off").CombinedOutput(); err != nil {
			t.Fatalf("ethtool on %s: %v\n%s", n.Link, err, out)
		}
		p4 := firstPod(t, l, n.Name)
		for _, c := range []struct {
			what string
			argv []string
		}{
			{"wgmesh0", []string{"cat", "/sys/class/net/wgmesh0/mtu"}},
			{"pod bridge", []string{"cat", "/sys/class/net/" + dataplane.DefaultBridge + "/mtu"}},
		} {
			out, err := l.Exec(ctx, n.Name, c.argv...)
			if err != nil || strings.TrimSpace(string(out)) != "1200" {
				t.Errorf("%s on %s (underlay 1280): mtu %q, %v; want 1200", c.what, n.Name, strings.TrimSpace(string(out)), err)
			}
		}
		conflist, err := os.ReadFile(filepath.Join(l.State().Nodes[n.Name].NodePath("/etc/cni/net.d"), lab.AgentConflist))
		if err != nil || !strings.Contains(string(conflist), `"mtu": 1200`) {
			t.Errorf("%s conflist lacks \"mtu\": 1200 (%v):\n%s", n.Name, err, conflist)
		}
		// netlink, not /sys: the node's mount namespace shows the node's
		// network namespace in /sys.
		out, err := l.PodExec(ctx, p4.Node, p4.Pod, "ip", "-o", "link", "show", "eth0")
		if err != nil || !strings.Contains(string(out), " mtu 1200 ") {
			t.Errorf("pod %s/%s eth0 (%v): %s; want mtu 1200 from the conflist", p4.Node, p4.Pod, err, out)
		}
		t.Logf("%s: underlay 1280 → wgmesh0, bridge, conflist and pod eth0 at 1200", n.Name)

		// Bulk TCP both ways between pods on a 1500 node and on the 1280
		// node; then again with the small node's pod at MTU 1420 (a pod
		// made before its node's MTU dropped): only the MSS clamp on the
		// wg path keeps its segments small enough.
		run := func(label string, port int) {
			for i, dir := range [][2]lab.PodRef{{p1, p4}, {p4, p1}} {
				src, dst := dir[0], dir[1]
				cfg := netnstest.StreamConfig{Addr: fmt.Sprintf("%s:%d", dst.IP, port+i), Bytes: 8 << 20, Chunk: 64 << 10, Seed: uint64(port + i), Timeout: 30 * time.Second}
				start := time.Now()
				sink := startRole(t, l, dst, "tcpsink", cfg, netnstest.SinkListening)
				source := startRole(t, l, src, "tcpsource", cfg, "")
				sent := roleResult(t, source, cfg.Timeout)
				got := roleResult(t, sink, cfg.Timeout)
				if sent.SHA256 != got.SHA256 || sent.Bytes != got.Bytes {
					t.Fatalf("%s %s → %s: sent %d bytes %s, received %d bytes %s", label, src.Node, dst.Node, sent.Bytes, sent.SHA256, got.Bytes, got.SHA256)
				}
				el := time.Since(start)
				t.Logf("%s: %s pod → %s pod: %d bytes intact in %s (%.0f Mbit/s)", label, src.Node, dst.Node, got.Bytes,
					el.Round(time.Millisecond), float64(got.Bytes)*8/el.Seconds()/1e6)
			}
		}
		run("pod mtu 1200", 5101)
		if out, err := l.PodExec(ctx, p4.Node, p4.Pod, "ip", "link", "set", "eth0", "mtu", "1420"); err != nil {
			t.Fatalf("set stale pod mtu: %v\n%s", err, out)
		}
		run("stale pod mtu 1420", 5111)
		fwd, err := l.Exec(ctx, n.Name, "nft", "list", "chain", "inet", dataplane.DefaultTable, dataplane.ChainForward)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(fwd), "maxseg size set rt mtu") {
			t.Errorf("%s has no MSS clamp rule:\n%s", n.Name, fwd)
		}
	})

	t.Run("Uninstall", func(t *testing.T) {
		agent := filepath.Join(binDir, "wgmesh-agent")
		// n1's agent runs: refused, nothing touched.
		out, err := l.Exec(ctx, n1, agent, "uninstall")
		if err == nil || !strings.Contains(string(out), "an agent is running") {
			t.Errorf("uninstall next to a running agent: err %v, output:\n%s", err, out)
		}
		if _, err := l.Exec(ctx, n1, "ip", "link", "show", "wgmesh0"); err != nil {
			t.Errorf("refused uninstall removed wgmesh0 on %s", n1)
		}
		// n3's agent was killed above: everything goes.
		out, err = l.Exec(ctx, n3, agent, "uninstall")
		if err != nil {
			t.Fatalf("uninstall on %s: %v\n%s", n3, err, out)
		}
		t.Logf("%s: wgmesh-agent uninstall:\n%s", n3, strings.TrimSpace(string(out)))
		checks := []struct {
			argv []string
			bad  func(out string, err error) bool
			what string
		}{
			{[]string{"ip", "link", "show", "wgmesh0"}, func(_ string, err error) bool { return err == nil }, "wgmesh0 still exists"},
			{[]string{"ip", "link", "show", dataplane.DefaultBridge}, func(_ string, err error) bool { return err == nil }, "bridge still exists"},
			{[]string{"ip", "route", "show", "proto", fmt.Sprint(dataplane.DefaultRouteProtocol)}, func(o string, _ error) bool { return strings.TrimSpace(o) != "" }, "routes left"},
			{[]string{"nft", "list", "tables"}, func(o string, _ error) bool { return strings.Contains(o, "wgmesh") }, "nftables tables left"},
			{[]string{"ls", "/etc/cni/net.d", "/var/run/wgmesh"}, func(o string, _ error) bool {
				return strings.Contains(o, ".conflist") || strings.Contains(o, "state.json")
			}, "conflist or state file left"},
		}
		for _, c := range checks {
			out, err := l.Exec(ctx, n3, c.argv...)
			if c.bad(string(out), err) {
				t.Errorf("%s after uninstall: %s: %s", n3, c.what, out)
			}
		}
	})
}

// maxRestartStall bounds a stream's stall across an agent restart. Half a
// second down costs ~0.7 s on an idle machine (TCP's retransmission
// backoff rounds it up); on a loaded 2-core machine several seconds. The
// failure it catches, a peer that keeps encrypting for the dead agent's
// session until WireGuard's own timers give up, stalls 25 s and more.
const maxRestartStall = 12 * time.Second

// pinger is a ping running in the background every 50 ms.
type pinger struct{ c *lineCmd }

func startPinger(t *testing.T, l *lab.Lab, from lab.PodRef, dst string) *pinger {
	t.Helper()
	argv, err := l.PodCommand(from.Node, from.Pod, "ping", "-n", "-i", "0.05", "-W", "1", dst)
	if err != nil {
		t.Fatal(err)
	}
	return &pinger{startLineCmd(t, argv, "PING")}
}

// startHostPinger pings from the node itself, from src (pinned: an unpinned
// ping gives up at once when the destination is unreachable).
func startHostPinger(t *testing.T, l *lab.Lab, node, dst, src string) *pinger {
	t.Helper()
	argv, err := l.NodeCommand(node, "ping", "-n", "-i", "0.05", "-W", "1", "-I", src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return &pinger{startLineCmd(t, argv, "PING")}
}

func replies(p *pinger) int { return len(pingout.Parse(p.c.output()).Replies) }

// waitReplies waits until the pinger has n replies; it returns how long.
func waitReplies(t *testing.T, p *pinger, n int) time.Duration {
	t.Helper()
	took, ok := lab.WaitFor(context.Background(), 20*time.Second, 20*time.Millisecond, func() bool { return replies(p) >= n })
	if !ok {
		t.Fatalf("%v: %d replies after %s, want %d:\n%s", p.c.cmd.Args, replies(p), took, n, p.c.output())
	}
	return took
}

// stop ends the ping (SIGINT: it prints its summary) and returns how many
// echo requests it sent.
func (p *pinger) stop(t *testing.T) int {
	t.Helper()
	_ = p.c.cmd.Process.Signal(syscall.SIGINT)
	return pingout.Parse(p.c.wait(5 * time.Second)).Sent
}

// gateway is the bridge address of the pod's node (first address of its /24).
func gateway(t *testing.T, podIP string) string {
	t.Helper()
	gw, err := nodenet.Gateway(netip.PrefixFrom(netip.MustParseAddr(podIP), 24))
	if err != nil {
		t.Fatal(err)
	}
	return gw.Addr().String()
}

func agentLog(t *testing.T, l *lab.Lab, node string) string {
	t.Helper()
	b, err := os.ReadFile(l.AgentLog(node))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// podAddressFrames lists the frames that show a pod address (IPv4 or ARP)
// and counts WireGuard UDP between node endpoints.
func podAddressFrames(frames []frame, l *lab.Lab) (bad []string, wg int) {
	podNet := netip.MustParsePrefix(podCIDRs)
	endpoints := map[netip.Addr]bool{}
	for _, n := range l.State().Nodes {
		endpoints[netip.MustParseAddr(n.Endpoint())] = true
	}
	for i, f := range frames {
		switch f.EtherType {
		case 0x0806:
			if podNet.Contains(f.ARPSender) || podNet.Contains(f.ARPTarget) {
				bad = append(bad, fmt.Sprintf("frame %d: ARP %s/%s", i, f.ARPSender, f.ARPTarget))
			}
		case 0x0800:
			switch {
			case podNet.Contains(f.Src) || podNet.Contains(f.Dst):
				bad = append(bad, fmt.Sprintf("frame %d: IPv4 %s -> %s proto %d", i, f.Src, f.Dst, f.Proto))
			case f.Proto == 17 && endpoints[f.Src] && endpoints[f.Dst] && (f.SrcPort == listenPort || f.DstPort == listenPort):
				wg++
			}
		}
	}
	return bad, wg
}

// startRole runs this test binary in a pod as role with cfg; with ready set
// it returns once that line appears.
func startRole(t *testing.T, l *lab.Lab, in lab.PodRef, role string, cfg netnstest.StreamConfig, ready string) *roleProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env, err := reexec.Env(rolePrefix, role, cfg)
	if err != nil {
		t.Fatal(err)
	}
	argv, err := l.PodCommand(in.Node, in.Pod, self)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out netnstest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	rp := &roleProc{cmd: cmd, out: &out, done: done}
	if ready != "" {
		_, ok := lab.WaitFor(context.Background(), 15*time.Second, 50*time.Millisecond, func() bool { return strings.Contains(out.String(), ready) })
		if !ok {
			t.Fatalf("%s in %s/%s: no %q:\n%s", role, in.Node, in.Pod, ready, out.String())
		}
	}
	return rp
}

// roleProc is a role running in a pod.
type roleProc struct {
	cmd  *exec.Cmd
	out  *netnstest.SyncBuffer
	done chan struct{}
}

// roleResult waits for a role and decodes its last JSON line.
func roleResult(t *testing.T, rp *roleProc, timeout time.Duration) netnstest.StreamResult {
	t.Helper()
	cmd := rp.cmd
	select {
	case <-rp.done:
	case <-time.After(timeout + 10*time.Second):
		t.Fatalf("%v did not finish:\n%s", cmd.Args, rp.out.String())
	}
	if !cmd.ProcessState.Success() {
		t.Fatalf("%v failed (%s):\n%s", cmd.Args, cmd.ProcessState, rp.out.String())
	}
	var res netnstest.StreamResult
	lines := strings.Split(strings.TrimSpace(rp.out.String()), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			if err := json.Unmarshal([]byte(lines[i]), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("%v printed no result:\n%s", cmd.Args, rp.out.String())
	return res
}
