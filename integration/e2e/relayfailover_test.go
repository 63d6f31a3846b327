package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/show"
)

// Bounds of TestRelayFailover. failoverBound: the direct path's last
// handshake can be at most 165 s + keepalive old when it breaks (WireGuard
// renews a live session by then), it is judged broken 180 s + 2×2 s after
// that handshake, then both agents' watches (1 s) and a pass each; 30 s
// covers passes and a loaded 2-core box. switchBound: going back, both
// ends see the same handshake and switch within a watch period and a pass
// of each other; 5 s for the load. recoverBound: after the unblock the
// direct peer's own keepalive (2 s) starts handshakes, at most one per 5 s,
// and the relayed pair's retry (1 min) tries too: 90 s.
const (
	failoverBound = 184*time.Second + 30*time.Second
	switchBound   = 5 * time.Second
	recoverBound  = 90 * time.Second
)

// TestRelayFailover is the lab proof that a direct path breaking while
// both agents run is relayed, and goes direct again once it works. Three
// public nodes, none marked as relay (the automatic choice: node1 is the
// only candidate besides the pair), keepalive 2 s. After the matrix is
// complete and every pair direct, node2's own namespace drops everything
// between it and node3's underlay address (nftables). Pings every 200 ms
// run throughout: node2's and node3's pods to node1's must never stop for
// more than switchBound; node2's to node3's may stop until the pair is
// relayed (failoverBound). Both ends must report the pair relayed via
// node1 (wgmeshctl show), the matrix must be complete, then the block is
// lifted and both ends must report it direct within recoverBound, the
// pair's pings stopping for at most switchBound around that switch. The
// underlay carries no pod address throughout, WireGuard between node2 and
// node3 again after the unblock.
func TestRelayFailover(t *testing.T) {
	l := newLab(t, 3, 1)
	ctx := context.Background()
	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node1", "node2", "node3"} {
		rnAnnotate(t, c, n, map[string]string{mesh.AnnotationKeepalive: "2"})
	}
	requireMatrix(t, ctx, l)
	st := l.State()
	p1, p2, p3 := firstPod(t, l, "node1"), firstPod(t, l, "node2"), firstPod(t, l, "node3")

	relayedVia := func(node, far string) (string, error) {
		out, err := l.Exec(ctx, node, filepath.Join(binDir, "wgmeshctl"), "show", "-o", "json")
		if err != nil && !strings.Contains(err.Error(), "exit status 1") {
			return "", fmt.Errorf("wgmeshctl show on %s: %w\n%s", node, err, out)
		}
		var r show.Report
		if err := json.Unmarshal(out, &r); err != nil {
			return "", fmt.Errorf("wgmeshctl show -o json on %s: %w\n%s", node, err, out)
		}
		for _, p := range r.Peers {
			if p.Node == far {
				return p.RelayedVia, nil
			}
		}
		return "", fmt.Errorf("%s has no peer %s", node, far)
	}
	// waitPair waits until both ends report the pair relayed via want
	// ("" for direct); it returns when both did.
	waitPair := func(want string, limit time.Duration) time.Time {
		t.Helper()
		var last []string
		_, ok := lab.WaitFor(ctx, limit, time.Second, func() bool {
			last = last[:0]
			for _, e := range [][2]string{{"node2", "node3"}, {"node3", "node2"}} {
				via, err := relayedVia(e[0], e[1])
				if err != nil {
					t.Log(err)
				}
				last = append(last, fmt.Sprintf("%s: %s via %q", e[0], e[1], via))
				if err != nil || via != want {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Fatalf("pair node2-node3 not via %q within %s: %v", want, limit, last)
		}
		return time.Now()
	}
	if _, err := relayedVia("node2", "node3"); err != nil {
		t.Fatal(err)
	}
	waitPair("", 30*time.Second)

	ns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", ns}, "-i", br, "-s", "128", "-w", pcap))
	defer capt.stop()

	const interval = 200 * time.Millisecond
	ping := func(from lab.PodRef, dst string) *lineCmd {
		argv, err := l.PodCommand(from.Node, from.Pod, "ping", "-D", "-n", "-i", "0.2", "-W", "1", dst)
		if err != nil {
			t.Fatal(err)
		}
		c := startLineCmd(t, argv, "PING")
		t.Cleanup(func() { _ = c.cmd.Process.Kill() })
		return c
	}
	pings := map[string]*lineCmd{
		"node2→node3": ping(p2, p3.IP), "node3→node2": ping(p3, p2.IP),
		"node2→node1": ping(p2, p1.IP), "node3→node1": ping(p3, p1.IP),
	}
	time.Sleep(2 * time.Second)

	far := st.Nodes["node3"].UnderlayIP
	nft := func(args ...string) {
		t.Helper()
		if out, err := l.Exec(ctx, "node2", append([]string{"nft"}, args...)...); err != nil {
			t.Fatalf("nft %v on node2: %v\n%s", args, err, out)
		}
	}
	const table = "wgmesh_e2e_block"
	blocked := time.Now()
	nft("add", "table", "inet", table)
	t.Cleanup(func() { _, _ = l.Exec(context.Background(), "node2", "nft", "delete", "table", "inet", table) })
	nft("add", "chain", "inet", table, "in", "{ type filter hook input priority -300; }")
	nft("add", "chain", "inet", table, "out", "{ type filter hook output priority -300; }")
	nft("add", "rule", "inet", table, "in", "ip", "saddr", far, "drop")
	nft("add", "rule", "inet", table, "out", "ip", "daddr", far, "drop")
	t.Logf("node2 drops all traffic with node3's underlay address %s", far)

	relayed := waitPair("node1", failoverBound+10*time.Second)
	t.Logf("node2-node3 relayed via node1 on both ends %s after the block", relayed.Sub(blocked).Round(time.Second))
	requireMatrix(t, ctx, l)
	afterRelay := time.Now()

	nft("delete", "table", "inet", table)
	unblocked := time.Now()
	direct := waitPair("", recoverBound)
	t.Logf("node2-node3 direct again on both ends %s after the unblock", direct.Sub(unblocked).Round(time.Second))
	time.Sleep(3 * time.Second) // replies just after the switch
	requireMatrix(t, ctx, l)
	end := time.Now()

	outs := map[string]pingout.Output{}
	for name, c := range pings {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		outs[name] = pingout.Parse(c.wait(5 * time.Second))
	}
	capt.stop()
	for _, name := range []string{"node2→node1", "node3→node1"} {
		g := outs[name].Gap(blocked, end, interval)
		t.Logf("%s: %d replies, longest stop %s", name, g.Received, g.Max.Round(10*time.Millisecond))
		if g.Max > switchBound {
			t.Errorf("%s stopped for %s (at %s), want at most %s: relaying one pair disturbed another", name, g.Max, g.Start.Format(time.TimeOnly), switchBound)
		}
	}
	for _, name := range []string{"node2→node3", "node3→node2"} {
		out := outs[name]
		broken := out.Gap(blocked, afterRelay, interval)
		back := out.Gap(afterRelay, end, interval)
		t.Logf("%s: blocked → relayed: longest stop %s from %s (%d replies); relayed → direct: longest stop %s (%d replies)",
			name, broken.Max.Round(10*time.Millisecond), broken.Start.Sub(blocked).Round(time.Second), broken.Received,
			back.Max.Round(10*time.Millisecond), back.Received)
		if broken.Max > failoverBound || broken.Received == 0 {
			t.Errorf("%s: stopped %s after the block (%d replies before the pair was relayed on both ends), want at most %s", name, broken.Max, broken.Received, failoverBound)
		}
		if back.Max > switchBound {
			t.Errorf("%s: stopped %s (at %s) while going direct again, want at most %s", name, back.Max, back.Start.Format(time.TimeOnly), switchBound)
		}
	}

	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	bad, wg := podAddressFrames(frames, l)
	pairs := map[string]int{}
	name := map[string]string{}
	for n, node := range st.Nodes {
		name[node.UnderlayIP] = n
	}
	for _, f := range frames {
		a, b := name[f.Src.String()], name[f.Dst.String()]
		if f.EtherType == 0x0800 && f.Proto == 17 && a != "" && b != "" {
			pairs[min(a, b)+"-"+max(a, b)]++
		}
	}
	t.Logf("underlay: %d frames, %d WireGuard, per node pair %v, %d with a pod address", len(frames), wg, pairs, len(bad))
	if len(bad) > 0 {
		t.Errorf("underlay frames with a pod address: %v", bad[:min(len(bad), 10)])
	}
	if pairs["node2-node3"] == 0 {
		t.Error("no WireGuard between node2 and node3 on the underlay: the direct path never came back")
	}
	if pairs["node1-node2"] == 0 || pairs["node1-node3"] == 0 {
		t.Errorf("WireGuard per pair %v: the relay's pairs are missing", pairs)
	}
}
