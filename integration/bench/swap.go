package bench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// daemonConf is what a node's agent configured on its wgmesh0: the device
// (wg showconf) and the routes through it. Upstream wireguard-go given
// the same is the same node with another daemon.
type daemonConf struct {
	conf   []byte
	routes []string
}

func saveDaemonConf(t testing.TB, tag string, p *Pair) [2]daemonConf {
	t.Helper()
	var cfg [2]daemonConf
	for i, n := range p.Nodes {
		conf, err := n.WG.Command(context.Background(), "wg", "showconf", n.Iface).Output()
		if err != nil {
			t.Fatalf("[%s] %s: wg showconf: %v", tag, n.Name, err)
		}
		out, err := n.WG.Command(context.Background(), "ip", "route", "show", "dev", n.Iface).Output()
		if err != nil {
			t.Fatalf("[%s] %s: ip route: %v", tag, n.Name, err)
		}
		cfg[i].conf = conf
		for _, r := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if r != "" {
				cfg[i].routes = append(cfg[i].routes, r)
			}
		}
		if !strings.Contains(string(conf), "[Peer]") || len(cfg[i].routes) == 0 {
			t.Fatalf("[%s] %s: the agent left no peer or route to take over:\n%s\n%v", tag, n.Name, conf, cfg[i].routes)
		}
	}
	return cfg
}

// startUpstreamOn starts upstream wireguard-go on node i's wgmesh0 (the
// agent must be gone) and gives it the agent's configuration and routes.
func startUpstreamOn(t testing.TB, tag string, tools Tools, p *Pair, i int, cfg daemonConf) *Background {
	t.Helper()
	n := p.Nodes[i]
	// The TUN takes one daemon at a time: wait until the last one has let
	// go of it (no carrier) or it is gone.
	netnstest.Eventually(t, 10*time.Second, n.Name+" "+n.Iface+" released by the previous daemon", func() error {
		out, err := n.WG.Command(context.Background(), "ip", "-o", "link", "show", "dev", n.Iface).CombinedOutput()
		if err != nil || strings.Contains(string(out), "NO-CARRIER") {
			return nil
		}
		return fmt.Errorf("still attached: %s", out)
	})
	// The killed agent left its UAPI socket file behind. wireguard-go
	// would find it, try it and remove it itself, and it gives up if the
	// file is gone by the time it removes it: a make bench run lost its
	// standard pass that way in its fourth round of bulk runs (2026-12-06;
	// what removed the file in between is not known). The daemon that
	// owned the file is gone: remove it here, so that wireguard-go makes
	// a fresh one at once.
	sock := wgdev.SocketPath(n.Iface)
	if out, err := n.WG.Command(context.Background(), "rm", "-f", sock).CombinedOutput(); err != nil {
		t.Fatalf("[%s] %s: remove the stale %s: %v: %s", tag, n.Name, sock, err, out)
	}
	// The agent's TUN is persistent: wireguard-go attaches to it (or
	// makes a new one if it is gone; the routes follow below).
	bg := StartDaemonIn(t, n.WG, n.Name+" wireguard-go (lab)", []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"},
		tools.UpstreamWG, "-f", n.Iface)
	netnstest.Eventually(t, 10*time.Second, n.Name+" wireguard-go UAPI socket", func() error {
		if bg.Exited() {
			t.Fatalf("[%s] wireguard-go exited:\n%s", tag, bg.Output())
		}
		return RunQuiet(n.WG, "wg", "show", n.Iface)
	})
	n.Pid = bg.cmd.Process.Pid
	set := n.WG.Command(context.Background(), "wg", "setconf", n.Iface, "/dev/stdin")
	set.Stdin = bytes.NewReader(cfg.conf)
	if out, err := set.CombinedOutput(); err != nil {
		t.Fatalf("[%s] %s: wg setconf: %v: %s", tag, n.Name, err, out)
	}
	steps := [][]string{{"ip", "link", "set", n.Iface, "mtu", strconv.Itoa(p.PodMTU), "up"}}
	for _, r := range cfg.routes {
		steps = append(steps, append(append([]string{"ip", "route", "replace"}, strings.Fields(r)...), "dev", n.Iface))
	}
	for _, argv := range steps {
		if out, err := n.WG.Command(context.Background(), argv...).CombinedOutput(); err != nil {
			t.Fatalf("[%s] %s: %v: %v: %s", tag, n.Name, argv, err, out)
		}
	}
	return bg
}

// daemonSwap lets upstream wireguard-go take turns with the agents on one
// lab (UpstreamSwapExtra): the wgmesh variant's lab, its pods, servers,
// rules and routes stay, only the daemon on both nodes changes, so that
// the two daemons' figures differ by the daemon alone and are measured
// minutes apart at most on the same namespaces. Two labs with the same
// daemon differ by a few percent per shape (docs/benchmarks.md, issue 15
// round 6), as much as the gap under study.
type daemonSwap struct {
	tools  Tools
	p      *Pair
	cfg    [2]daemonConf
	active Variant
	up     [2]*Background
	// Peak is the largest VmHWM (MiB) over every lifetime of each
	// daemon: a restart starts the kernel's figure again.
	Peak map[Variant]float64
	// Swaps and SwapTime: how often and how long the harness switched.
	Swaps    int
	SwapTime time.Duration
}

func newDaemonSwap(t testing.TB, tools Tools, p *Pair) *daemonSwap {
	t.Helper()
	if p.Lab == nil || p.Variant != WGMesh {
		t.Fatalf("[%s] %s needs the wgmesh variant on the lab", UpstreamSwapExtra.Label, p.Variant)
	}
	return &daemonSwap{tools: tools, p: p, cfg: saveDaemonConf(t, UpstreamSwapExtra.Label, p), active: WGMesh, Peak: map[Variant]float64{}}
}

// use makes v (WGMesh or Upstream) the daemon on both nodes and waits until
// pods reach each other through it. warm: then a short bulk run each way,
// not measured: a daemon that has run for a while has its pools and heap
// grown (upstream's grow to hundreds of MiB), and a measurement right
// after a restart would charge that growth to the run it happens in.
func (s *daemonSwap) use(t testing.TB, v Variant, warm bool) {
	t.Helper()
	if s.active == v {
		return
	}
	start := time.Now()
	s.Peak[s.active] = max(s.Peak[s.active], pairMem(t, s.p).Peak)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := s.p.Lab
	switch v {
	case Upstream:
		for _, n := range s.p.Nodes {
			if err := l.KillAgent(n.Name); err != nil {
				t.Fatalf("[%s] %v", UpstreamSwapExtra.Label, err)
			}
		}
		for i := range s.p.Nodes {
			s.up[i] = startUpstreamOn(t, UpstreamSwapExtra.Label, s.tools, s.p, i, s.cfg[i])
		}
	case WGMesh:
		for i := range s.p.Nodes {
			s.up[i].Stop()
		}
		// A starting agent lists Nodes once: the apiserver runs for the
		// start only, as before the measurements (RunPass).
		if err := l.StartAPIServer(ctx); err != nil {
			t.Fatalf("[%s] start lab apiserver: %v", UpstreamSwapExtra.Label, err)
		}
		for _, n := range s.p.Nodes {
			if err := l.StartAgent(n.Name); err != nil {
				t.Fatalf("[%s] %v", UpstreamSwapExtra.Label, err)
			}
		}
		if err := l.Load(); err != nil {
			t.Fatal(err)
		}
		for _, n := range s.p.Nodes {
			ln := l.State().Nodes[n.Name]
			if ln == nil || ln.Agent == nil {
				t.Fatalf("[%s] %s: no agent after the start", UpstreamSwapExtra.Label, n.Name)
			}
			n.Pid = ln.Agent.PID
		}
	default:
		t.Fatalf("daemon swap: unknown variant %q", v)
	}
	s.active = v
	for i, n := range s.p.Nodes {
		other := s.p.Nodes[1-i]
		netnstest.Eventually(t, 30*time.Second, fmt.Sprintf("[%s] %s pod reaches %s pod through %s", UpstreamSwapExtra.Label, n.Name, other.Name, v), func() error {
			return RunQuiet(n.Pod, "ping", "-n", "-c", "1", "-W", "1", other.PodIP.String())
		})
	}
	if v == WGMesh {
		if err := l.StopAPIServer(); err != nil {
			t.Fatalf("[%s] stop lab apiserver: %v", UpstreamSwapExtra.Label, err)
		}
	}
	// Both daemons start measuring from a settled state: the handshake
	// done, the start-up's allocations released.
	time.Sleep(time.Second)
	if warm {
		for _, reverse := range []bool{false, true} {
			if _, err := Bulk(s.p, 4, reverse, 2*time.Second, 0); err != nil {
				t.Fatalf("[%s] warm-up through %s: %v", UpstreamSwapExtra.Label, v, err)
			}
		}
	}
	s.Swaps++
	s.SwapTime += time.Since(start)
}
