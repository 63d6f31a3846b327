package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

// Settings choose what a benchmark run measures and how long.
type Settings struct {
	Mode string `json:"mode"` // "smoke" or "full"
	// Runs of every data-path figure (the report shows the median).
	Runs int `json:"runs"`
	// Duration of each iperf3 run, or Bytes (if set) sent per run.
	Duration time.Duration `json:"duration"`
	Bytes    int64         `json:"bytes,omitempty"`
	// Variants of the standard pass (underlay MTU 1500).
	Variants []Variant `json:"variants"`
	// Extras are additional wgmesh pairs of the standard pass, e.g. the
	// no-offload fallback.
	Extras []Extra `json:"extras"`
	// JumboVariants run again over an MTU 9000 underlay (none: skipped).
	JumboVariants []Variant `json:"jumbo_variants"`
	// RR round trips per run (after RRWarmup), pings per run.
	RRCount, RRWarmup int
	PingCount         int
	PingInterval      time.Duration
	// Scale: cluster sizes, process runs per size, rounds per run.
	ScaleNodes  []int `json:"scale_nodes"`
	ScaleRuns   int   `json:"scale_runs"`
	ScaleRounds int   `json:"scale_rounds"`
	// Convergence: cluster sizes after the join, runs per size.
	ConvergeNodes []int `json:"converge_nodes"`
	ConvergeRuns  int   `json:"converge_runs"`
	CNI           CNIConfig
	// ProfileDir, if set, receives pprof CPU profiles of the scale runs.
	ProfileDir string `json:"-"`
}

// SmokeSettings exercise every figure with tiny durations: the run inside
// `go test ./...` that keeps the harness from rotting.
func SmokeSettings() Settings {
	return Settings{
		Mode: "smoke", Runs: 1, Duration: time.Second, Bytes: 16 << 20,
		Variants: AllVariants, Extras: []Extra{NoOffloadExtra}, JumboVariants: []Variant{WGMesh},
		RRCount: 200, RRWarmup: 20, PingCount: 10, PingInterval: 10 * time.Millisecond,
		ScaleNodes: []int{100}, ScaleRuns: 1, ScaleRounds: 3,
		ConvergeNodes: []int{3}, ConvergeRuns: 1,
		CNI: CNIConfig{Pods: 4, Rounds: 1, Parallel: 8, ParallelPods: 8},
	}
}

// FullSettings are `make bench`'s: every figure the median of 5 runs. The
// same-lab baseline is upstream-swap (one lab, the daemons taking turns)
// rather than upstream-lab (a second lab): two labs differ by as much as
// the daemons do (docs/benchmarks.md, issue 15 round 7).
func FullSettings() Settings {
	return Settings{
		Mode: "full", Runs: 5, Duration: 10 * time.Second,
		Variants: AllVariants, Extras: []Extra{NoOffloadExtra, NoMemLimitExtra, UpstreamSwapExtra}, JumboVariants: AllVariants,
		RRCount: 10000, RRWarmup: 500, PingCount: 200, PingInterval: 10 * time.Millisecond,
		ScaleNodes: []int{1000, 5000}, ScaleRuns: 5, ScaleRounds: 9,
		ConvergeNodes: []int{3, 8}, ConvergeRuns: 5,
		CNI: CNIConfig{Pods: 40, Rounds: 5, Parallel: 8, ParallelPods: 64},
	}
}

// Extra is an additional wgmesh pair with other settings.
type Extra struct {
	Label string `json:"label"`
	// Variant is WGMesh unless set.
	Variant Variant `json:"variant,omitempty"`
	// Rules installs wgmesh's dataplane (fail-closed guard, NAT and
	// forward rules, routes, bridge) on an upstream or debian pair, to
	// separate the cost of those rules from the cost of the embedding.
	Rules bool `json:"rules,omitempty"`
	// NoOffload: TUN without IFF_VNET_HDR (node role only: the agent's
	// command has no switch for it).
	NoOffload bool `json:"no_offload"`
	// Env for the agent (or node role) processes, e.g. GOMEMLIMIT=off.
	Env []string `json:"env"`
	// AgentArgs are extra flags for the lab's agents (lab only), e.g.
	// --network-policy=false.
	AgentArgs []string `json:"agent_args,omitempty"`
	// Lab runs Variant (upstream) on a lab of its own in place of the
	// agents: the same network, rules and processes around it as the
	// wgmesh variant's, so that the two differ in the daemon only.
	Lab bool `json:"lab,omitempty"`
	// Swap runs Variant (upstream) on the wgmesh variant's own lab,
	// taking turns with its agents (daemonSwap): the same namespaces,
	// pods and servers, only the daemon differs.
	Swap bool `json:"swap,omitempty"`
}

var (
	// NoOffloadExtra is the fallback path for kernels without TUN offloads.
	NoOffloadExtra = Extra{Label: "wgmesh-nooffload", NoOffload: true}
	// NoMemLimitExtra runs the agent without its default soft memory
	// limit, to show what the limit costs in throughput.
	NoMemLimitExtra = Extra{Label: "wgmesh-nomemlimit", Env: []string{"GOMEMLIMIT=off"}}
	// UpstreamRulesExtra is upstream wireguard-go behind wgmesh's
	// dataplane rules.
	UpstreamRulesExtra = Extra{Label: "upstream+rules", Variant: Upstream, Rules: true}
	// UpstreamLabExtra is upstream wireguard-go on the lab, the baseline
	// in the wgmesh variant's own environment (full mode with the lab).
	UpstreamLabExtra = Extra{Label: "upstream-lab", Variant: Upstream, Lab: true}
	// UpstreamSwapExtra is upstream wireguard-go taking turns with the
	// agents on the wgmesh variant's lab: the paired baseline (needs the
	// wgmesh variant and the lab).
	UpstreamSwapExtra = Extra{Label: "upstream-swap", Variant: Upstream, Swap: true}
)

// BulkConfig is one iperf3 shape.
type BulkConfig struct {
	Streams int  `json:"streams"`
	Reverse bool `json:"reverse"`
}

// Key names the shape in the report: "1×fwd", "4×rev".
func (b BulkConfig) Key() string {
	d := "fwd"
	if b.Reverse {
		d = "rev"
	}
	return fmt.Sprintf("%d×%s", b.Streams, d)
}

// BulkConfigs: single and 4 streams, both directions.
var BulkConfigs = []BulkConfig{{1, false}, {4, false}, {1, true}, {4, true}}

// BulkSeries is one shape's runs.
type BulkSeries struct {
	Gbps        Series `json:"gbps"`
	Retransmits Series `json:"retransmits"`
	// Core-seconds per Gbit transferred: both daemons / whole machine.
	DaemonCPUPerGbit Series       `json:"daemon_core_s_per_gbit"`
	SystemCPUPerGbit Series       `json:"system_core_s_per_gbit"`
	UnderlayPacket   Series       `json:"underlay_bytes_per_packet"`
	Samples          []BulkSample `json:"samples"`
}

// VariantResult is everything measured on one Pair.
type VariantResult struct {
	Label   string  `json:"label"`
	Variant Variant `json:"variant"`
	// Impl says what ran: which binary, configured how.
	Impl        string `json:"impl"`
	NoOffload   bool   `json:"no_offload"`
	UnderlayMTU int    `json:"underlay_mtu"`
	PodMTU      int    `json:"pod_mtu"`
	// TunnelMTU is the tunnel interface's MTU as the kernel shows it.
	TunnelMTU int                    `json:"tunnel_mtu"`
	Bulk      map[string]*BulkSeries `json:"bulk"`
	RRP50     Series                 `json:"rr_p50_us"`
	RRP99     Series                 `json:"rr_p99_us"`
	PingP50   Series                 `json:"ping_p50_us"`
	PingP99   Series                 `json:"ping_p99_us"`
	// Daemon memory in MiB, the larger of the two nodes: after setup
	// (idle), after all bulk runs, and the peak (VmHWM).
	RSSIdleMB float64 `json:"rss_idle_mb"`
	// AnonIdleMB is the idle RssAnon: RSSIdleMB less file-backed pages
	// (mostly the binary's own text and read-only data).
	AnonIdleMB float64 `json:"anon_idle_mb"`
	// PrivateIdleMB is the idle Private_Dirty (smaps_rollup).
	PrivateIdleMB float64 `json:"private_idle_mb"`
	RSSAfterMB    float64 `json:"rss_after_bulk_mb"`
	RSSPeakMB     float64 `json:"rss_peak_mb"`
	Offloads      Offloads
	// Underlay capture during a 1-stream forward run (tcpdump, IP length
	// of WireGuard UDP packets as seen on node-a's eth0).
	CaptureMeanBytes float64 `json:"capture_mean_bytes"`
	CaptureMaxBytes  float64 `json:"capture_max_bytes"`
	CapturePackets   int     `json:"capture_packets"`
}

// Pass is the data-path figures over one underlay MTU.
type Pass struct {
	Name        string           `json:"name"`
	UnderlayMTU int              `json:"underlay_mtu"`
	Variants    []*VariantResult `json:"variants"`
}

// Host describes the machine and tools.
type Host struct {
	Kernel      string   `json:"kernel"`
	CPUs        int      `json:"cpus"`
	GoVersion   string   `json:"go"`
	Upstream    string   `json:"upstream_wireguard_go"`
	Debian      string   `json:"debian_wireguard_go"`
	Iperf3      string   `json:"iperf3"`
	LoadBefore  string   `json:"loadavg_before"`
	LoadAfter   string   `json:"loadavg_after"`
	CPUModel    string   `json:"cpu_model"`
	Notes       []string `json:"notes,omitempty"`
	WGMeshBuild string   `json:"wgmesh_commit"`
}

// Report is one benchmark run.
type Report struct {
	Command     string              `json:"command"`
	Started     time.Time           `json:"started"`
	Finished    time.Time           `json:"finished"`
	Settings    Settings            `json:"settings"`
	Host        Host                `json:"host"`
	Passes      []Pass              `json:"passes"`
	Scale       []ScaleSeries       `json:"scale"`
	Convergence []ConvergenceResult `json:"convergence"`
	CNI         *CNIResult          `json:"cni"`
	// Incomplete: some part of the run failed (see the test log).
	Incomplete bool `json:"incomplete,omitempty"`
}

// ScaleSeries is the scale figures of one cluster size over several
// process runs.
type ScaleSeries struct {
	Nodes   int           `json:"nodes"`
	Real    bool          `json:"real_device"`
	Runs    []ScaleResult `json:"runs"`
	Profile string        `json:"profile,omitempty"`
}

// RunAll runs every figure the settings ask for.
func RunAll(t *testing.T, tools Tools, s Settings, command string) *Report {
	rep := &Report{Command: command, Started: time.Now(), Settings: s, Host: hostInfo(tools)}
	if len(s.Variants) > 0 || len(s.Extras) > 0 {
		t.Run("datapath", func(t *testing.T) {
			rep.Passes = append(rep.Passes, RunPass(t, tools, s, "standard", 1500, s.Variants, s.Extras))
		})
	}
	if len(s.JumboVariants) > 0 {
		t.Run("jumbo", func(t *testing.T) {
			rep.Passes = append(rep.Passes, RunPass(t, tools, s, "jumbo", 9000, s.JumboVariants, nil))
		})
	}
	t.Run("scale", func(t *testing.T) {
		for _, n := range s.ScaleNodes {
			rep.Scale = append(rep.Scale, RunScale(t, tools, s, n))
		}
	})
	t.Run("convergence", func(t *testing.T) {
		for _, n := range s.ConvergeNodes {
			if tools.LabDir != "" {
				rep.Convergence = append(rep.Convergence, ConvergeLab(t, tools, n, s.ConvergeRuns))
			} else {
				rep.Convergence = append(rep.Convergence, ConvergeFile(t, tools, n, s.ConvergeRuns))
			}
		}
	})
	if s.CNI.Rounds > 0 {
		t.Run("cni", func(t *testing.T) {
			rep.CNI = BenchCNI(t, tools, s.CNI)
		})
	}
	rep.Finished = time.Now()
	rep.Host.LoadAfter = loadavg()
	return rep
}

// RunPass sets up every variant over an underlay of the given MTU, keeps
// them all up, and measures them interleaved (run r of every variant
// before run r+1 of any), so that load drifting on the machine hits all
// variants alike; every other round goes through the variants backwards
// (A B | B A | A B ...), which cancels a steady drift between neighbours
// and lets a same-lab pair (UpstreamSwapExtra) switch daemons once per
// round.
func RunPass(t *testing.T, tools Tools, s Settings, name string, mtu int, variants []Variant, extras []Extra) Pass {
	t.Helper()
	pass := Pass{Name: name, UnderlayMTU: mtu}
	type entry struct {
		pair *Pair
		res  *VariantResult
		// swap, if set, is the lab this entry shares with another; daemon
		// is the one it measures there.
		swap   *daemonSwap
		daemon Variant
	}
	var es []*entry
	var swap *daemonSwap
	add := func(v Variant, x Extra) {
		label := string(v)
		if x.Label != "" {
			label = x.Label
		}
		r := &VariantResult{Label: label, Variant: v, Impl: implOf(tools, v, x), NoOffload: x.NoOffload, UnderlayMTU: mtu, Bulk: map[string]*BulkSeries{}}
		e := &entry{res: r}
		if x.Swap {
			i := slices.IndexFunc(es, func(e *entry) bool { return e.res.Label == string(WGMesh) })
			if i < 0 || swap != nil {
				t.Fatalf("[%s/%s] needs the wgmesh variant (once)", name, label)
			}
			swap = newDaemonSwap(t, tools, es[i].pair)
			es[i].swap, es[i].daemon = swap, WGMesh
			shared := *es[i].pair // the same nodes, so Pid follows the daemon
			shared.Variant = v
			e.pair, e.swap, e.daemon = &shared, swap, v
		} else {
			e.pair = Setup(t, tools, v, SetupOptions{UnderlayMTU: mtu, NoOffload: x.NoOffload, Env: x.Env, AgentArgs: x.AgentArgs, Rules: x.Rules, Lab: x.Lab})
			StartServers(t, tools.Self, e.pair)
		}
		r.PodMTU = e.pair.PodMTU
		if e.pair.Nodes[0].Iface != "" {
			mtu, err := LinkMTU(e.pair.Nodes[0].NS, e.pair.Nodes[0].Iface)
			if err != nil {
				t.Fatal(err)
			}
			r.TunnelMTU = mtu
		}
		es = append(es, e)
		t.Logf("[%s/%s] up: pod MTU %d, tunnel MTU %d", name, label, r.PodMTU, r.TunnelMTU)
	}
	for _, v := range variants {
		add(v, Extra{})
	}
	for _, x := range extras {
		add(cmp.Or(x.Variant, WGMesh), x)
	}
	// on makes e's daemon the running one (a same-lab pair); warm before
	// a measurement under load, not before the idle memory figures.
	on := func(e *entry, warm bool) {
		if e.swap != nil {
			e.swap.use(t, e.daemon, warm)
		}
	}
	// next is the order of the next round: forwards, then backwards.
	round := 0
	next := func() []*entry {
		round++
		if round%2 == 1 {
			return es
		}
		back := slices.Clone(es)
		slices.Reverse(back)
		return back
	}
	// The labs' kube-apiservers would compete for this machine's CPU
	// with every variant's data path; the agents keep running from their
	// informer caches while the apiservers are stopped (etcd stays).
	for _, e := range es {
		if e.pair.Lab != nil {
			if err := e.pair.Lab.StopAPIServer(); err != nil {
				t.Fatalf("[%s] stop lab apiserver: %v", e.res.Label, err)
			}
			e.res.Impl += "; kube-apiserver stopped during the measurements"
		}
	}
	time.Sleep(time.Second)
	for _, e := range next() {
		on(e, false)
		m := pairMem(t, e.pair)
		e.res.RSSIdleMB, e.res.AnonIdleMB, e.res.PrivateIdleMB = m.RSS, m.Anon, m.PrivateDirty
	}
	for r := range s.Runs {
		for _, e := range next() {
			on(e, true)
			rr, err := RequestResponse(tools.Self, e.pair, s.RRWarmup, s.RRCount)
			if err != nil {
				t.Fatalf("[%s] rr: %v", e.res.Label, err)
			}
			e.res.RRP50.Add(rr.P50)
			e.res.RRP99.Add(rr.P99)
			pg, err := Ping(e.pair, s.PingCount, s.PingInterval)
			if err != nil {
				t.Fatalf("[%s] ping: %v", e.res.Label, err)
			}
			e.res.PingP50.Add(pg.P50)
			e.res.PingP99.Add(pg.P99)
			t.Logf("[%s/%s] run %d: rr p50 %.0fµs p99 %.0fµs, ping p50 %.0fµs", name, e.res.Label, r, rr.P50, rr.P99, pg.P50)
		}
	}
	for r := range s.Runs {
		for _, bc := range BulkConfigs {
			for _, e := range next() {
				on(e, true)
				smp, err := Bulk(e.pair, bc.Streams, bc.Reverse, s.Duration, s.Bytes)
				if err != nil {
					t.Fatalf("[%s] iperf3 %s: %v", e.res.Label, bc.Key(), err)
				}
				bs := e.res.Bulk[bc.Key()]
				if bs == nil {
					bs = &BulkSeries{}
					e.res.Bulk[bc.Key()] = bs
				}
				gbit := smp.Bytes * 8 / 1e9
				bs.Samples = append(bs.Samples, smp)
				bs.Gbps.Add(smp.Gbps)
				bs.Retransmits.Add(float64(smp.Retransmits))
				bs.DaemonCPUPerGbit.Add(smp.DaemonCPU / gbit)
				bs.SystemCPUPerGbit.Add(smp.SystemCPU / gbit)
				bs.UnderlayPacket.Add(smp.UnderlayBytesPerPacket)
				t.Logf("[%s/%s] run %d %s: %.2f Gbit/s, %d retr, daemons %.2f core-s/Gbit, system %.2f, %.0f B/underlay pkt",
					name, e.res.Label, r, bc.Key(), smp.Gbps, smp.Retransmits, smp.DaemonCPU/gbit, smp.SystemCPU/gbit, smp.UnderlayBytesPerPacket)
			}
		}
	}
	for _, e := range next() {
		on(e, true)
		m := pairMem(t, e.pair)
		e.res.RSSAfterMB, e.res.RSSPeakMB = m.RSS, m.Peak
		if e.swap != nil {
			e.res.RSSPeakMB = max(m.Peak, e.swap.Peak[e.daemon])
		}
		if e.pair.Variant == Plain {
			continue
		}
		off, err := TunnelOffloads(e.pair)
		if err != nil {
			t.Fatalf("[%s] ethtool: %v", e.res.Label, err)
		}
		e.res.Offloads = off
		mean, mx, n, err := UnderlayCapture(e.pair, time.Second)
		if err != nil {
			t.Fatalf("[%s] capture: %v", e.res.Label, err)
		}
		e.res.CaptureMeanBytes, e.res.CaptureMaxBytes, e.res.CapturePackets = mean, mx, n
	}
	for _, e := range es {
		if e.swap != nil {
			e.res.Impl += fmt.Sprintf("; took turns with the other daemon on one lab: %d switches, %s in all, each before a measurement under load followed by 2 s of unmeasured 4-stream bulk each way (peak RSS: over every lifetime)",
				e.swap.Swaps, e.swap.SwapTime.Round(time.Second))
		}
		pass.Variants = append(pass.Variants, e.res)
	}
	return pass
}

// pairMem returns the larger of each figure over the pair's daemons.
func pairMem(t testing.TB, p *Pair) (out ProcMem) {
	t.Helper()
	for _, n := range p.Nodes {
		if n.Pid == 0 {
			continue
		}
		m, err := ReadProcMem(n.Pid)
		if err != nil {
			t.Fatalf("memory of %s daemon: %v", n.Name, err)
		}
		out = ProcMem{RSS: max(out.RSS, m.RSS), Peak: max(out.Peak, m.Peak), Anon: max(out.Anon, m.Anon), PrivateDirty: max(out.PrivateDirty, m.PrivateDirty)}
	}
	return out
}

// RunScale runs the scale role s.ScaleRuns times in fresh namespaces.
func RunScale(t *testing.T, tools Tools, s Settings, nodes int) ScaleSeries {
	t.Helper()
	ser := ScaleSeries{Nodes: nodes, Real: true}
	for r := range s.ScaleRuns {
		t.Run(fmt.Sprintf("nodes-%d-run-%d", nodes, r), func(t *testing.T) {
			prefix := netnstest.Prefix(t)
			ns := netnstest.NewNS(t, prefix+"-scale")
			cfg := ScaleConfig{Nodes: nodes, Rounds: s.ScaleRounds, Interface: prefix + "s"}
			if s.ProfileDir != "" && r == 0 {
				cfg.CPUProfile = filepath.Join(s.ProfileDir, fmt.Sprintf("scale-%d.pprof", nodes))
				ser.Profile = cfg.CPUProfile
			}
			env, err := roleEnv("scale", cfg)
			if err != nil {
				t.Fatal(err)
			}
			cmd := ns.Command(t.Context(), tools.Self)
			cmd.Env = append(os.Environ(), env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("scale role (%d nodes): %v\n%s", nodes, err, stderr.String())
			}
			var res ScaleResult
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("scale output %q: %v", out, err)
			}
			t.Logf("scale %d nodes: full %.0fms wall %.0fms cpu; no-op %.2fms (%d writes); change pass %.2fms, applied after %.2fms (peers touched %d); %.1f KiB/peer device, %.1f KiB/peer total",
				nodes, res.FullWallMS, res.FullCPUMS, res.NoopWallMS, res.NoopWrites, res.ChangeWallMS, res.ChangeApplyMS, res.ChangePeers, res.KBPerPeerDevice, res.KBPerPeerTotal)
			ser.Runs = append(ser.Runs, res)
		})
	}
	return ser
}

func hostInfo(tools Tools) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadavg()}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		h.Kernel = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("go", "version", "-m", tools.UpstreamWG).Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "mod" {
				h.Upstream = f[1] + " " + f[2]
			}
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "wireguard-go").Output(); err == nil {
		h.Debian = "wireguard-go " + string(out) + " (Debian)"
	}
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		h.Iperf3, _, _ = strings.Cut(string(out), "\n")
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				h.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		h.WGMeshBuild = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			h.WGMeshBuild += " (with uncommitted changes)"
		}
	}
	return h
}

func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func implOf(tools Tools, v Variant, x Extra) string {
	env := ""
	if len(x.Env) > 0 {
		env = ", environment " + strings.Join(x.Env, " ")
	}
	if len(x.AgentArgs) > 0 {
		env += ", agent flags " + strings.Join(x.AgentArgs, " ")
	}
	if x.Rules {
		env += ", behind wgmesh's dataplane (mesh/dataplane Prepare+Apply: guard, NAT/forward rules, routes, bridge)"
	}
	if x.Lab {
		env += ", on a lab of its own in place of the agents (their wgmesh0, configuration, routes and rules; integration/lab)"
	}
	return implBase(tools, v, x.NoOffload) + env
}

func implBase(tools Tools, v Variant, noOffload bool) string {
	switch {
	case v == Plain:
		return "routed over the underlay, no tunnel"
	case v == Upstream:
		return "wireguard-go " + filepath.Base(tools.UpstreamWG) + " (module version from go.mod), wg set"
	case v == Debian:
		return tools.DebianWG + " (Debian package), wg set"
	case tools.LabDir != "" && !noOffload:
		return "wgmesh-agent binary on a real kube-apiserver, pods by the wgmesh CNI plugin (integration/lab)"
	case noOffload:
		return "node role (the agent as shipped, mesh/agent, over a file node source), TUN without IFF_VNET_HDR"
	default:
		return "node role (the agent as shipped, mesh/agent, over a file node source), pods by the wgmesh CNI plugin"
	}
}
