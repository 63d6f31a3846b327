package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
)

// labRunner runs commands in a lab pod or node.
type labRunner struct {
	l         *lab.Lab
	node, pod string
}

func (r labRunner) Command(ctx context.Context, argv ...string) *exec.Cmd {
	var full []string
	var err error
	if r.pod != "" {
		full, err = r.l.PodCommand(r.node, r.pod, argv...)
	} else {
		full, err = r.l.NodeCommand(r.node, argv...)
	}
	if err != nil {
		// Surfaces as the command's failure.
		return exec.CommandContext(ctx, "false")
	}
	return exec.CommandContext(ctx, full[0], full[1:]...)
}

// NewLab starts a lab (real kube-apiserver and etcd, the real agent and CNI
// binaries) with nodes nodes of one pod each, over an underlay of the given
// MTU, and takes it down in cleanup. agentArgs are extra flags for its agents.
func NewLab(t testing.TB, binDir string, nodes, mtu int, agentArgs ...string) *lab.Lab {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	name := "bench" + hex.EncodeToString(b[:])
	l := lab.New(lab.Config{Name: name, BinDir: binDir, AgentArgs: agentArgs, Log: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("lab down: %v", err)
		}
		os.RemoveAll(l.Config().StateDir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if mtu == 0 || mtu == 1500 {
		if err := l.Up(ctx, lab.UpOptions{Nodes: nodes, Pods: 1}); err != nil {
			t.Fatalf("lab up: %v", err)
		}
		return l
	}
	// Up makes 1500-byte nodes: start with a placeholder node, add the
	// real ones with the MTU, then remove the placeholder.
	if err := l.Up(ctx, lab.UpOptions{Nodes: 1}); err != nil {
		t.Fatalf("lab up: %v", err)
	}
	for range nodes {
		if _, err := l.AddNode(ctx, lab.NodeOptions{MTU: mtu, Pods: 1}); err != nil {
			t.Fatalf("lab add-node: %v", err)
		}
	}
	if err := l.RemoveNode(ctx, "node1"); err != nil {
		t.Fatalf("lab remove placeholder: %v", err)
	}
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	return l
}

// labPair is the wgmesh variant on the lab: the real wgmesh-agent binary
// on a real kube-apiserver, pods attached by the real CNI plugin.
func labPair(t testing.TB, tools Tools, opt SetupOptions) *Pair {
	t.Helper()
	// The lab starts agents with its own environment.
	for _, kv := range opt.Env {
		k, v, _ := strings.Cut(kv, "=")
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	l := NewLab(t, tools.LabDir, 2, opt.UnderlayMTU, opt.AgentArgs...)
	// The underlay the other variants have (topo.go): the lab makes its
	// bridge promiscuous so that a capture sees every frame, and a
	// promiscuous bridge also hands a copy of every frame it forwards
	// to its own IP stack, which drops it after a route lookup: per
	// packet work the other variants' underlay does not do (tcpdump
	// still sets the flag itself while it captures).
	ulNS, ulBridge := l.Underlay()
	if out, err := exec.Command("ip", "-n", ulNS, "link", "set", ulBridge, "promisc", "off").CombinedOutput(); err != nil {
		t.Fatalf("lab underlay promisc off: %v: %s", err, out)
	}
	p := &Pair{Variant: WGMesh, Prefix: l.Config().Name, UnderlayMTU: opt.UnderlayMTU, Lab: l}
	st := l.State()
	names := st.NodeNames()
	if len(names) != 2 {
		t.Fatalf("lab has nodes %v, want 2", names)
	}
	for i, name := range names {
		ln := st.Nodes[name]
		pods := ln.PodNames()
		if len(pods) != 1 || ln.Agent == nil {
			t.Fatalf("lab node %s: pods %v, agent %v", name, pods, ln.Agent)
		}
		pod := ln.Pods[pods[0]]
		n := &Node{
			Name:    name,
			NS:      &netnstest.NS{Name: ln.Netns},
			Pod:     labRunner{l: l, node: name, pod: pod.Name},
			WG:      labRunner{l: l, node: name},
			Under:   netip.MustParseAddr(ln.UnderlayIP),
			PodCIDR: netip.MustParsePrefix(ln.PodCIDR),
			PodIP:   netip.MustParseAddr(pod.IP),
			Iface:   "wgmesh0",
			Pid:     ln.Agent.PID,
		}
		n.GW = n.PodCIDR.Addr().Next()
		p.Nodes[i] = n
	}
	mtu, err := LinkMTU(p.Nodes[0].Pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	p.PodMTU = mtu
	return p
}

// ConvergeLab measures joins on the lab: nodes-1 existing nodes and the
// joining node run real agents on a real apiserver. The joining node is
// first brought up completely (agent, pod), then its Node object is deleted
// until every existing node has dropped it (pings fail), and re-created
// with its podCIDR and its agent's published key and endpoint: from the
// moment the create returns, pingers in every existing pod (ping -D every
// 10ms) give each existing node's first reply. That is the existing agents'
// whole path — watch event, informer, reconcile, device and route write —
// without counting the time a runtime needs to start the new node's pod.
func ConvergeLab(t testing.TB, tools Tools, nodes, runs int) ConvergenceResult {
	t.Helper()
	res := ConvergenceResult{Nodes: nodes, Source: "apiserver"}
	runSub(t, fmt.Sprintf("lab-join-%d-nodes", nodes), func(t testing.TB) {
		l := NewLab(t, tools.LabDir, nodes, 0)
		st := l.State()
		names := st.NodeNames()
		joiner := st.Nodes[names[len(names)-1]]
		newIP := joiner.Pods[joiner.PodNames()[0]].IP
		c, err := l.Admin()
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for r := range runs {
			orig, err := c.CoreV1().Nodes().Get(ctx, joiner.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if orig.Annotations[mesh.AnnotationPublicKey] == "" {
				t.Fatalf("%s has no published key", joiner.Name)
			}
			if err := c.CoreV1().Nodes().Delete(ctx, joiner.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			var existing []labRunner
			for _, name := range names[:len(names)-1] {
				ln := st.Nodes[name]
				existing = append(existing, labRunner{l: l, node: name, pod: ln.PodNames()[0]})
			}
			for _, e := range existing {
				netnstest.Eventually(t, 30*time.Second, e.node+" drops the deleted node", func() error {
					if RunQuiet(e, "ping", "-n", "-c", "1", "-W", "0.2", newIP) == nil {
						return fmt.Errorf("still reaches %s", newIP)
					}
					return nil
				})
			}
			pingers := make([]*Background, len(existing))
			for i, e := range existing {
				pingers[i] = StartProber(t, tools.Self, e, e.node+" prober", newIP)
			}
			time.Sleep(100 * time.Millisecond)
			again := &v1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: orig.Name, Labels: orig.Labels, Annotations: orig.Annotations},
				Spec:       v1.NodeSpec{PodCIDR: orig.Spec.PodCIDR, PodCIDRs: orig.Spec.PodCIDRs},
			}
			// t0 before the create: the API write is part of the join.
			t0 := time.Now()
			if _, err := c.CoreV1().Nodes().Create(ctx, again, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			firsts := waitFirstReplies(t, "every existing node reaches the re-joined pod", pingers)
			var ms []float64
			for _, f := range firsts {
				if f.Before(t0) {
					t.Fatalf("reply at %s before the join at %s: the measurement is broken", f, t0)
				}
				ms = append(ms, Millis(f.Sub(t0)))
			}
			for _, p := range pingers {
				p.Stop()
			}
			// Status (InternalIP) back as the kubelet would report it.
			if cur, err := c.CoreV1().Nodes().Get(ctx, joiner.Name, metav1.GetOptions{}); err == nil {
				cur.Status = orig.Status
				c.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			}
			res.P50.Add(Median(ms))
			res.Max.Add(slices.Max(ms))
			res.All = append(res.All, ms...)
			t.Logf("lab join %d nodes, run %d: %v ms", nodes, r, ms)
		}
	})
	return res
}

// upstreamLabPair is upstream wireguard-go in the wgmesh variant's own
// environment: a lab brought up like labPair's (agents, pods, the agents'
// rules, routes and bridge), then each agent killed and upstream
// wireguard-go started on the wgmesh0 the agent left behind, configured
// with what the agent had configured (wg showconf) and given back the
// agent's routes through it. The lab variant and this pair then differ in
// the daemon only, which the bench's own topology for upstream cannot
// promise (docs/benchmarks.md, issue 15 round 5).
func upstreamLabPair(t testing.TB, tools Tools, opt SetupOptions) *Pair {
	t.Helper()
	p := labPair(t, tools, SetupOptions{UnderlayMTU: opt.UnderlayMTU})
	p.Variant = Upstream
	cfg := saveDaemonConf(t, UpstreamLabExtra.Label, p)
	for i, n := range p.Nodes {
		if err := p.Lab.KillAgent(n.Name); err != nil {
			t.Fatalf("[%s] %v", UpstreamLabExtra.Label, err)
		}
		startUpstreamOn(t, UpstreamLabExtra.Label, tools, p, i, cfg[i])
	}
	return p
}
