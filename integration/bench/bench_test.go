package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

var (
	modeFlag     = flag.String("bench.mode", "smoke", `"smoke" (tiny durations, part of go test ./...) or "full" (make bench)`)
	outFlag      = flag.String("bench.out", "", "directory for report.md and report.json (default: a temp dir)")
	profileFlag  = flag.String("bench.profile", "", "directory for pprof CPU profiles of the scale runs")
	onlyFlag     = flag.String("bench.only", "", "comma-separated subset of datapath,jumbo,scale,convergence,cni (default all)")
	runsFlag     = flag.Int("bench.runs", 0, "override the runs of every figure (0: the mode's)")
	scaleFlag    = flag.String("bench.scale-nodes", "", "override the scale cluster sizes, e.g. 1000,5000")
	variantsFlag = flag.String("bench.variants", "", "override the standard pass's variants, e.g. upstream,wgmesh")
	extrasFlag   = flag.String("bench.extras", "", `override the extra pairs: comma-separated "nooffload", "nomemlimit", "upstream+rules", "upstream-lab" (needs the lab), "upstream-swap" (needs the lab and the wgmesh variant), "memlimit=SIZE" (GOMEMLIMIT), "env:K=V[+K2=V2]", "nooffload-env:K=V[+K2=V2]", "args:--flag=V" (lab agents), or "none"`)
	durFlag      = flag.Duration("bench.duration", 0, "override the iperf3 run length")
	labFlag      = flag.String("bench.lab", "auto", `run the wgmesh variant and convergence on integration/lab (real agent, real kube-apiserver): "on", "off", or "auto" (on in full mode)`)
)

func TestMain(m *testing.M) {
	MaybeRunRole()
	flag.Parse()
	os.Exit(m.Run())
}

// buildTools builds the wgmesh CNI plugin and the upstream wireguard-go
// (from the wireguard module version in this repository's go.mod) into dir.
func buildTools(t *testing.T, dir string) Tools {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tools := Tools{Self: self, DebianWG: "/usr/bin/wireguard-go", CNIDir: filepath.Join(dir, "cni"),
		UpstreamWG: filepath.Join(dir, "wireguard-go-upstream")}
	for _, b := range []struct{ out, pkg string }{
		{filepath.Join(tools.CNIDir, "wgmesh"), "github.com/wgmesh/wgmesh/cmd/wgmesh-cni"},
		// wireguard-go's own Makefile builds with a plain `go build`.
		{tools.UpstreamWG, "golang.zx2c4.com/wireguard"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return tools
}

// buildLab builds the agent, CNI plugin and lab CLI into dir and fetches
// kube-apiserver, etcd and kubectl from the tools cache (building them on
// first use: ~10 minutes on 2 cores).
func buildLab(t *testing.T, dir string) {
	t.Helper()
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/wgmesh-agent", "./cmd/wgmesh-cni", "./cmd/wgmesh-lab")
	cmd.Dir = strings.TrimSpace(string(root))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd = exec.Command("bash", filepath.Join(cmd.Dir, "integration/tools/build.sh"), dir)
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("integration/tools/build.sh: %v\n%s", err, out)
	}
}

// TestBench runs the benchmark. Without flags it is the smoke run: every
// figure with tiny durations, checked for sanity, in well under a minute.
// `make bench` runs it with -bench.mode=full. Needs root; fails (never
// skips) without it or without the tools.
func TestBench(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "wg", "iperf3", "ping", "ethtool", "tcpdump", "nft", "iptables", "sysctl", "/usr/bin/wireguard-go")
	var s Settings
	switch *modeFlag {
	case "smoke":
		s = SmokeSettings()
	case "full":
		s = FullSettings()
	default:
		t.Fatalf("-bench.mode %q: want smoke or full", *modeFlag)
	}
	s.ProfileDir = *profileFlag
	if s.ProfileDir != "" {
		// The scale roles write their profiles here long before the
		// report is written (which creates -bench.out).
		if err := os.MkdirAll(s.ProfileDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	extra := ""
	if *runsFlag > 0 {
		s.Runs, s.ScaleRuns, s.ConvergeRuns, s.CNI.Rounds = *runsFlag, *runsFlag, *runsFlag, *runsFlag
		extra += fmt.Sprintf(" -bench.runs=%d", *runsFlag)
	}
	if *variantsFlag != "" {
		s.Variants = nil
		for _, v := range strings.Split(*variantsFlag, ",") {
			if !slices.Contains(AllVariants, Variant(v)) {
				t.Fatalf("-bench.variants: unknown %q", v)
			}
			s.Variants = append(s.Variants, Variant(v))
		}
		extra += " -bench.variants=" + *variantsFlag
	}
	if *extrasFlag != "" {
		s.Extras = nil
		for _, x := range strings.Split(*extrasFlag, ",") {
			switch {
			case x == "none":
			case x == "nooffload":
				s.Extras = append(s.Extras, NoOffloadExtra)
			case x == "nomemlimit":
				s.Extras = append(s.Extras, NoMemLimitExtra)
			case x == "upstream+rules":
				s.Extras = append(s.Extras, UpstreamRulesExtra)
			case x == "upstream-lab":
				s.Extras = append(s.Extras, UpstreamLabExtra)
			case x == "upstream-swap":
				s.Extras = append(s.Extras, UpstreamSwapExtra)
			case strings.HasPrefix(x, "env:"):
				// Several variables: env:K=V+K2=V2. The lab drops WGMESH_*
				// from its agents' environment: agent settings go in args:.
				kv := strings.TrimPrefix(x, "env:")
				s.Extras = append(s.Extras, Extra{Label: "wgmesh-" + kv, Env: strings.Split(kv, "+")})
			case strings.HasPrefix(x, "nooffload-env:"):
				// The no-offload node role with extra environment, e.g.
				// nooffload-env:WGMESH_BENCH_INFLIGHT=-1.
				kv := strings.TrimPrefix(x, "nooffload-env:")
				s.Extras = append(s.Extras, Extra{Label: "wgmesh-nooffload-" + kv, NoOffload: true, Env: strings.Split(kv, "+")})
			case strings.HasPrefix(x, "args:"):
				a := strings.TrimPrefix(x, "args:")
				s.Extras = append(s.Extras, Extra{Label: "wgmesh" + a, AgentArgs: strings.Fields(a)})
			case strings.HasPrefix(x, "memlimit="):
				v := strings.TrimPrefix(x, "memlimit=")
				s.Extras = append(s.Extras, Extra{Label: "wgmesh-memlimit-" + v, Env: []string{"GOMEMLIMIT=" + v}})
			default:
				t.Fatalf("-bench.extras: unknown %q", x)
			}
		}
		extra += " -bench.extras=" + *extrasFlag
	}
	if *durFlag > 0 {
		s.Duration, s.Bytes = *durFlag, 0
		extra += " -bench.duration=" + durFlag.String()
	}
	if *scaleFlag != "" {
		s.ScaleNodes = nil
		for _, f := range strings.Split(*scaleFlag, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				t.Fatalf("-bench.scale-nodes: %v", err)
			}
			s.ScaleNodes = append(s.ScaleNodes, n)
		}
		extra += " -bench.scale-nodes=" + *scaleFlag
	}
	if *onlyFlag != "" {
		s = only(t, s, *onlyFlag)
	}
	start := time.Now()
	tools := buildTools(t, t.TempDir())
	useLab := *labFlag == "on" || (*labFlag == "auto" && s.Mode == "full")
	if useLab {
		tools.LabDir = t.TempDir()
		buildLab(t, tools.LabDir)
	} else if slices.ContainsFunc(s.Extras, func(x Extra) bool { return x.Lab || x.Swap }) {
		if *extrasFlag != "" {
			t.Fatal("-bench.extras=upstream-lab and upstream-swap need the lab (-bench.lab=on)")
		}
		// Without the lab the wgmesh variant is the node role in the
		// bench's own topology, as upstream is: no lab baseline needed.
		s.Extras = slices.DeleteFunc(s.Extras, func(x Extra) bool { return x.Lab || x.Swap })
	}
	t.Logf("tools built in %s", time.Since(start).Round(time.Millisecond))
	cmd := "go test -count=1 -run '^TestBench$' ./integration/bench/ -args -bench.mode=" + s.Mode
	if *onlyFlag != "" {
		cmd += " -bench.only=" + *onlyFlag
	}
	if *labFlag != "auto" {
		cmd += " -bench.lab=" + *labFlag
	}
	cmd += extra
	rep := RunAll(t, tools, s, cmd)
	// A part that failed leaves the others' figures: write them anyway,
	// marked incomplete.
	rep.Incomplete = t.Failed()
	out := *outFlag
	if out == "" {
		out = t.TempDir()
	}
	if err := rep.Write(out); err != nil {
		t.Fatal(err)
	}
	md := rep.Markdown()
	t.Logf("report written to %s:\n%s", out, md)
	if !rep.Incomplete {
		checkReport(t, rep, s)
	}
}

// only drops the parts not named in list.
func only(t *testing.T, s Settings, list string) Settings {
	want := map[string]bool{}
	for _, p := range strings.Split(list, ",") {
		switch p = strings.TrimSpace(p); p {
		case "datapath", "jumbo", "scale", "convergence", "cni":
			want[p] = true
		default:
			t.Fatalf("-bench.only: unknown part %q", p)
		}
	}
	if !want["datapath"] {
		s.Variants, s.Extras = nil, nil
	}
	if !want["jumbo"] {
		s.JumboVariants = nil
	}
	if !want["scale"] {
		s.ScaleNodes = nil
	}
	if !want["convergence"] {
		s.ConvergeNodes = nil
	}
	if !want["cni"] {
		s.CNI = CNIConfig{}
	}
	return s
}

// checkReport fails on a run whose figures are missing or impossible, and
// on the product requirements that are not a matter of speed: automatic
// MTU (1420 on 1500, 8920 on 9000), offloads on and off where asked, zero
// writes on a no-op resync, one peer touched per Node change, no
// duplicate IPs.
func checkReport(t *testing.T, rep *Report, s Settings) {
	t.Helper()
	for _, p := range rep.Passes {
		if len(p.Variants) == 0 {
			continue
		}
		for _, v := range p.Variants {
			for _, bc := range BulkConfigs {
				bs := v.Bulk[bc.Key()]
				if bs == nil || bs.Gbps.N() != s.Runs || !(bs.Gbps.Median > 0) {
					t.Errorf("[%s/%s] %s: want %d positive throughput runs, got %+v", p.Name, v.Label, bc.Key(), s.Runs, bs)
				}
			}
			if v.RRP50.N() != s.Runs || !(v.RRP50.Median > 0) || !(v.RRP99.Median >= v.RRP50.Median) {
				t.Errorf("[%s/%s] implausible RR latency p50 %v p99 %v", p.Name, v.Label, v.RRP50, v.RRP99)
			}
			if !(v.PingP50.Median > 0) {
				t.Errorf("[%s/%s] no ping latency", p.Name, v.Label)
			}
			if v.Variant != Plain && !(v.RSSIdleMB > 0 && v.RSSPeakMB >= v.RSSAfterMB) {
				t.Errorf("[%s/%s] implausible daemon memory idle %.1f after %.1f peak %.1f", p.Name, v.Label, v.RSSIdleMB, v.RSSAfterMB, v.RSSPeakMB)
			}
			if v.Variant == WGMesh {
				if want := p.UnderlayMTU - wgOverhead; v.PodMTU != want || v.TunnelMTU != want {
					t.Errorf("[%s/%s] pod MTU %d, tunnel MTU %d on a %d underlay: want %d automatically", p.Name, v.Label, v.PodMTU, v.TunnelMTU, p.UnderlayMTU, want)
				}
				if v.Offloads.TSO == v.NoOffload {
					t.Errorf("[%s/%s] TUN TSO %v with no-offload %v", p.Name, v.Label, v.Offloads.TSO, v.NoOffload)
				}
			}
		}
	}
	if len(s.Variants) > 0 && rep.pass("standard") == nil {
		t.Error("standard pass missing")
	}
	for _, sc := range rep.Scale {
		if len(sc.Runs) != s.ScaleRuns {
			t.Errorf("scale %d: %d runs, want %d", sc.Nodes, len(sc.Runs), s.ScaleRuns)
		}
		for _, r := range sc.Runs {
			if r.NoopWrites != 0 || r.ChangePeers != 1 || !(r.FullWallMS > 0) {
				t.Errorf("scale %d: no-op writes %d, change touched %d peers, full %.1fms", sc.Nodes, r.NoopWrites, r.ChangePeers, r.FullWallMS)
			}
		}
	}
	for _, c := range rep.Convergence {
		if len(c.All) != s.ConvergeRuns*(c.Nodes-1) {
			t.Errorf("convergence %d: %d samples", c.Nodes, len(c.All))
		}
	}
	if c := rep.CNI; s.CNI.Rounds > 0 {
		if c == nil || c.DuplicateIPs != 0 || !(c.AddP50["wgmesh"].Median > 0) || !(c.AddsPerSec["wgmesh"].Median > 0) {
			t.Errorf("CNI figures implausible: %+v", c)
		}
	}
	md := rep.Markdown()
	for _, want := range []string{"## Targets", "### 1. Throughput", "### 4. Offloads"} {
		if len(s.Variants) > 0 && !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "NaN") {
		t.Errorf("markdown has NaN:\n%s", md)
	}
}
