package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// CNIConfig shapes the CNI benchmark.
type CNIConfig struct {
	// Pods per sequential round; Rounds of ADD-all-then-DEL-all.
	Pods, Rounds int
	// Concurrent ADDs in flight and pods per concurrent round.
	Parallel, ParallelPods int
}

// CNIRound is one round of one method ("wgmesh" through libcni, or the
// "iproute2" floor).
type CNIRound struct {
	AddP50MS, AddP99MS float64
	DelP50MS, DelP99MS float64
	// AddsPerSec with Parallel ADDs in flight.
	AddsPerSec float64
}

// CNIResult holds the series per method.
type CNIResult struct {
	Config CNIConfig `json:"config"`
	// Methods: "wgmesh", "iproute2".
	AddP50     map[string]*Series `json:"add_p50_ms"`
	AddP99     map[string]*Series `json:"add_p99_ms"`
	DelP50     map[string]*Series `json:"del_p50_ms"`
	DelP99     map[string]*Series `json:"del_p99_ms"`
	AddsPerSec map[string]*Series `json:"adds_per_sec"`
	// DuplicateIPs across every concurrent round (must be 0).
	DuplicateIPs int `json:"duplicate_ips"`
}

// cniNode is a node namespace with the agent's conflist and a stand-in for
// its guard table, for the CNI benchmark: the plugin creates the bridge on
// first ADD.
type cniNode struct {
	ns      *netnstest.NS
	runner  *CNIRunner
	podCIDR netip.Prefix
	pods    []*netnstest.NS
}

// BenchCNI measures CNI ADD/DEL through libcni with the wgmesh plugin and
// the same veth/address/route/bridge steps done with iproute2 commands.
func BenchCNI(t testing.TB, tools Tools, cfg CNIConfig) *CNIResult {
	t.Helper()
	res := &CNIResult{Config: cfg, AddP50: map[string]*Series{}, AddP99: map[string]*Series{}, DelP50: map[string]*Series{},
		DelP99: map[string]*Series{}, AddsPerSec: map[string]*Series{}}
	for _, m := range []string{"wgmesh", "iproute2"} {
		res.AddP50[m], res.AddP99[m], res.DelP50[m], res.DelP99[m], res.AddsPerSec[m] = &Series{}, &Series{}, &Series{}, &Series{}, &Series{}
	}
	prefix := netnstest.Prefix(t)
	n := &cniNode{ns: netnstest.NewNS(t, prefix+"-cni"), podCIDR: netip.MustParsePrefix("10.244.64.0/18")}
	// The plugin serves pods only once the agent's fail-closed guard and
	// bridge are in place, as on a real node.
	runDataplaneRoleIn(t, tools.Self, n.ns, DataplaneRoleConfig{Interface: nodenet.Interface, PrepareOnly: true,
		State: mesh.DataplaneState{LocalPodCIDRs: []netip.Prefix{n.podCIDR}, MTU: 1420}})
	dir := t.TempDir()
	confDir := filepath.Join(dir, "net.d")
	if _, err := cni.WriteConflist(confDir, cni.NodeConf{MTU: 1420, PodCIDRs: []netip.Prefix{n.podCIDR}, DataDir: filepath.Join(dir, "data")}); err != nil {
		t.Fatal(err)
	}
	// The plugin refuses ADD until the agent's fail-closed guard table
	// exists; no agent runs here, so an empty table of its name stands in
	// (it goes with the namespace).
	n.ns.MustRun(t, "nft", "add", "table", "inet", cni.GuardTable)
	n.runner = NewCNIRunner(t, tools.CNIDir, confDir, n.ns)
	total := max(cfg.Pods, cfg.ParallelPods)
	for i := range total {
		n.pods = append(n.pods, netnstest.NewNS(t, fmt.Sprintf("%s-c%d", prefix, i)))
	}
	// One ADD/DEL warms the page cache for both methods (the iproute2
	// floor uses the agent's bridge too).
	warm := RuntimeConf(prefix+"-warm", n.pods[0])
	ctx := context.Background()
	if _, err := n.runner.Add(ctx, warm); err != nil {
		t.Fatalf("warm-up ADD: %v", err)
	}
	if err := n.runner.Del(ctx, warm); err != nil {
		t.Fatalf("warm-up DEL: %v", err)
	}

	for r := range cfg.Rounds {
		for _, m := range []string{"wgmesh", "iproute2"} {
			round, dups, err := n.round(prefix, r, m, cfg)
			if err != nil {
				t.Fatalf("CNI round %d (%s): %v", r, m, err)
			}
			res.DuplicateIPs += dups
			res.AddP50[m].Add(round.AddP50MS)
			res.AddP99[m].Add(round.AddP99MS)
			res.DelP50[m].Add(round.DelP50MS)
			res.DelP99[m].Add(round.DelP99MS)
			res.AddsPerSec[m].Add(round.AddsPerSec)
		}
	}
	return res
}

// ops is ADD and DEL of pod i by one method.
type ops struct {
	add func(i int) (netip.Addr, error)
	del func(i int) error
}

func (n *cniNode) methods(prefix string, round int, m string) ops {
	id := func(i int) string { return fmt.Sprintf("%s-r%d-%d", prefix, round, i) }
	ctx := context.Background()
	if m == "wgmesh" {
		return ops{
			add: func(i int) (netip.Addr, error) { return n.runner.Add(ctx, RuntimeConf(id(i), n.pods[i])) },
			del: func(i int) error { return n.runner.Del(ctx, RuntimeConf(id(i), n.pods[i])) },
		}
	}
	gw := n.podCIDR.Addr().Next()
	return ops{
		add: func(i int) (netip.Addr, error) {
			// The plugin's steps, one iproute2 command each; the address
			// comes from the index (no IPAM: this is a floor).
			a := gw
			for range i + 1 {
				a = a.Next()
			}
			host := fmt.Sprintf("fl%d", i)
			pod := n.pods[i].Name
			for _, argv := range [][]string{
				{"ip", "-n", n.ns.Name, "link", "add", host, "mtu", "1420", "type", "veth", "peer", "name", "eth0", "mtu", "1420", "netns", pod},
				{"ip", "-n", pod, "addr", "add", netip.PrefixFrom(a, n.podCIDR.Bits()).String(), "dev", "eth0"},
				{"ip", "-n", pod, "link", "set", "eth0", "up"},
				{"ip", "-n", pod, "route", "add", "default", "via", gw.String()},
				{"ip", "-n", n.ns.Name, "link", "set", host, "master", cni.DefaultBridge, "up"},
				{"ip", "-n", n.ns.Name, "link", "set", host, "type", "bridge_slave", "hairpin", "on"},
			} {
				if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
					return netip.Addr{}, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
				}
			}
			return a, nil
		},
		del: func(i int) error {
			out, err := exec.Command("ip", "-n", n.ns.Name, "link", "del", fmt.Sprintf("fl%d", i)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("ip link del: %w: %s", err, out)
			}
			return nil
		},
	}
}

func (n *cniNode) round(prefix string, r int, m string, cfg CNIConfig) (CNIRound, int, error) {
	o := n.methods(prefix, r, m)
	var adds, dels []time.Duration
	for i := range cfg.Pods {
		t0 := time.Now()
		if _, err := o.add(i); err != nil {
			return CNIRound{}, 0, err
		}
		adds = append(adds, time.Since(t0))
	}
	for i := range cfg.Pods {
		t0 := time.Now()
		if err := o.del(i); err != nil {
			return CNIRound{}, 0, err
		}
		dels = append(dels, time.Since(t0))
	}
	slices.Sort(adds)
	slices.Sort(dels)
	out := CNIRound{
		AddP50MS: Millis(Percentile(adds, 0.5)), AddP99MS: Millis(Percentile(adds, 0.99)),
		DelP50MS: Millis(Percentile(dels, 0.5)), DelP99MS: Millis(Percentile(dels, 0.99)),
	}

	// Concurrent: Parallel workers take pods from a shared counter.
	o = n.methods(prefix+"p", r, m)
	var mu sync.Mutex
	next := 0
	ips := map[netip.Addr]int{}
	var firstErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	for range cfg.Parallel {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= cfg.ParallelPods {
					return
				}
				ip, err := o.add(i)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					ips[ip]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	wall := time.Since(t0)
	if firstErr != nil {
		return out, 0, firstErr
	}
	out.AddsPerSec = float64(cfg.ParallelPods) / wall.Seconds()
	dups := 0
	for _, c := range ips {
		dups += c - 1
	}
	if len(ips)+dups != cfg.ParallelPods {
		return out, dups, fmt.Errorf("%d addresses for %d pods", len(ips)+dups, cfg.ParallelPods)
	}
	for i := range cfg.ParallelPods {
		if err := o.del(i); err != nil {
			return out, dups, err
		}
	}
	return out, dups, nil
}
