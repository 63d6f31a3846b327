package bench

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// ConvergenceResult is one cluster size's join times: from the moment the
// new Node (key + podCIDR) becomes visible to the existing agents to each
// existing node's first successful pod→new-pod ping.
type ConvergenceResult struct {
	// Nodes in the cluster after the join.
	Nodes int `json:"nodes"`
	// Source says what fed the agents: "file" (the node role's file
	// source, polled every 20ms, no apiserver) or "apiserver" (the lab).
	Source string `json:"source"`
	// Per run: the median and the maximum over the existing nodes.
	P50 Series `json:"p50_ms"`
	Max Series `json:"max_ms"`
	// All single measurements (every existing node, every run), for the
	// overall p50/p99.
	All []float64 `json:"all_ms"`
}

// ConvergeFile measures joins with the node role and its file source:
// nodes-1 nodes run with a shared node list; the new node starts with a
// list of its own that already includes itself (its agent is up, its pod
// attached); at t0 the shared list gains the new node. Pingers in every
// existing pod (ping -D every 10ms) give the first reply time.
func ConvergeFile(t testing.TB, tools Tools, nodes, runs int) ConvergenceResult {
	t.Helper()
	res := ConvergenceResult{Nodes: nodes, Source: "file"}
	for r := range runs {
		ms := convergeOnce(t, tools, nodes, r)
		res.P50.Add(Median(ms))
		res.Max.Add(slices.Max(ms))
		res.All = append(res.All, ms...)
	}
	return res
}

func convergeOnce(t testing.TB, tools Tools, nodes, run int) []float64 {
	t.Helper()
	var out []float64
	// A subtest scopes the cleanup: each run's namespaces go before the
	// next run starts.
	ok := runSub(t, fmt.Sprintf("join-%d-nodes-run-%d", nodes, run), func(t testing.TB) {
		prefix := netnstest.Prefix(t)
		dir := t.TempDir()
		ul := netnstest.NewNS(t, prefix+"-ul")
		ul.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
		ul.MustRun(t, "ip", "addr", "add", underlayGW+"/24", "dev", "br0")
		ul.MustRun(t, "ip", "link", "set", "br0", "up")
		shared := filepath.Join(dir, "nodes.json")
		own := filepath.Join(dir, "new-node.json")
		var all []*Node
		var raws []mesh.RawNode
		for i := range nodes {
			n := &Node{
				Name:    fmt.Sprintf("node%d", i+1),
				Under:   netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)}),
				PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 0}), 24),
				KeyFile: filepath.Join(dir, fmt.Sprint(i), "private.key"),
				ConfDir: filepath.Join(dir, fmt.Sprint(i), "net.d"),
				Iface:   fmt.Sprintf("%s%d", prefix, i),
			}
			n.NS = netnstest.NewNS(t, fmt.Sprintf("%s-n%d", prefix, i))
			n.PodNS = netnstest.NewNS(t, fmt.Sprintf("%s-p%d", prefix, i))
			n.Pod, n.WG = n.PodNS, n.NS
			link := fmt.Sprintf("n%d", i+1)
			ul.MustRun(t, "ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", n.NS.Name)
			ul.MustRun(t, "ip", "link", "set", link, "master", "br0", "up")
			n.NS.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(n.Under, 24).String(), "dev", "eth0")
			n.NS.MustRun(t, "ip", "link", "set", "eth0", "up")
			n.NS.MustRun(t, "ip", "route", "add", "default", "via", underlayGW)
			key, _, err := wgdev.LoadOrCreateKey(n.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			raws = append(raws, SpecNode(n.Name, key.PublicKey().String(), n.Under, n.PodCIDR))
			all = append(all, n)
		}
		existing, newNode := all[:nodes-1], all[nodes-1]
		if err := WriteSpec(shared, raws[:nodes-1]); err != nil {
			t.Fatal(err)
		}
		if err := WriteSpec(own, raws); err != nil {
			t.Fatal(err)
		}
		for _, n := range all {
			spec := shared
			if n == newNode {
				spec = own
			}
			StartNodeRole(t, tools.Self, n, NodeRoleConfig{
				Name: n.Name, Interface: n.Iface, ListenPort: listenPort, KeyFile: n.KeyFile, Spec: spec,
				CNIConfDir: n.ConfDir, CNIDataDir: filepath.Join(filepath.Dir(n.ConfDir), "cni-data"),
				ClusterCIDRs: dataplane.DefaultClusterCIDRs,
			})
		}
		for _, n := range all {
			netnstest.Eventually(t, 30*time.Second, n.Name+" conflist", func() error {
				if n.Daemon.Exited() {
					t.Fatalf("%s node exited:\n%s", n.Name, n.Daemon.Output())
				}
				_, err := Run(n.NS, "test", "-e", filepath.Join(n.ConfDir, "10-wgmesh.conflist"))
				return err
			})
			n.PodIP = AttachCNI(t, tools.CNIDir, n, "conv-"+prefix+"-"+n.Name)
		}
		// The existing mesh works before the join.
		if len(existing) > 1 {
			netnstest.Eventually(t, 20*time.Second, "existing mesh", func() error {
				return RunQuiet(existing[0].Pod, "ping", "-n", "-c", "1", "-W", "1", existing[1].PodIP.String())
			})
		}
		pingers := make([]*Background, len(existing))
		for i, n := range existing {
			pingers[i] = StartProber(t, tools.Self, n.Pod, n.Name+" prober", newNode.PodIP.String())
		}
		time.Sleep(100 * time.Millisecond) // probes failing for a while
		for i, p := range pingers {
			if _, ok := ProbeReply(p.Output()); ok {
				t.Fatalf("%s reaches the new pod before the join: the measurement is broken", existing[i].Name)
			}
		}
		t0 := time.Now()
		if err := WriteSpec(shared, raws); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				for i, p := range pingers {
					t.Logf("pinger in %s:\n%s", existing[i].Name, lastLines(p.Output(), 5))
				}
			}
		})
		firsts := waitFirstReplies(t, "every existing node reaches the new pod", pingers)
		for i, f := range firsts {
			d := f.Sub(t0)
			if d < 0 {
				t.Fatalf("%s got a reply before the join (%s): the test is broken", existing[i].Name, d)
			}
			out = append(out, Millis(d))
		}
	})
	if !ok {
		t.Fatalf("join of %d nodes failed", nodes)
	}
	return out
}

// StartProber runs the prober role via r toward target and waits until it
// sends.
func StartProber(t testing.TB, self string, r Runner, name, target string) *Background {
	t.Helper()
	env, err := roleEnv("prober", ProbeConfig{Target: target, Interval: 5 * time.Millisecond, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b := StartIn(t, r, name, env, self)
	netnstest.Eventually(t, 10*time.Second, name+" started", func() error {
		if !strings.Contains(b.Output(), probeReady) {
			if b.Exited() {
				t.Fatalf("%s exited: %s", name, b.Output())
			}
			return fmt.Errorf("not yet")
		}
		return nil
	})
	return b
}

// ProbeReply returns the time of the prober's first echo reply.
func ProbeReply(out string) (time.Time, bool) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, probeReply+" "); ok {
			ns, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return time.Unix(0, ns), true
			}
		}
	}
	return time.Time{}, false
}

// waitFirstReplies waits until every prober has had a reply and returns
// the time of each one's first.
func waitFirstReplies(t testing.TB, what string, probers []*Background) []time.Time {
	t.Helper()
	firsts := make([]time.Time, len(probers))
	netnstest.Eventually(t, 30*time.Second, what, func() error {
		var missing []string
		for i, p := range probers {
			if firsts[i].IsZero() {
				if ts, ok := ProbeReply(p.Output()); ok {
					firsts[i] = ts
				} else {
					missing = append(missing, p.Name)
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no reply yet in %v", missing)
		}
		return nil
	})
	return firsts
}

// runSub runs f as a subtest when t is a *testing.T, so its cleanups run
// when it ends.
func runSub(t testing.TB, name string, f func(t testing.TB)) bool {
	if tt, ok := t.(*testing.T); ok {
		return tt.Run(name, func(t *testing.T) { f(t) })
	}
	if tb, ok := t.(*testing.B); ok {
		return tb.Run(name, func(b *testing.B) { f(b) })
	}
	f(t)
	return !t.Failed()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
