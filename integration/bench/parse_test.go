package bench

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseIperf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    IperfResult
		wantErr string
	}{
		{
			name: "tcp",
			in:   `{"end":{"sum_sent":{"retransmits":3,"bits_per_second":2.6e9},"sum_received":{"seconds":9.0,"bytes":2.9e9,"bits_per_second":2.5e9}}}`,
			want: IperfResult{Gbps: 2.5, Retransmits: 3, Seconds: 9, Bytes: 2.9e9},
		},
		{name: "error", in: `{"error":"unable to connect to server"}`, wantErr: "unable to connect"},
		{name: "udp has no retransmits", in: `{"end":{"sum_sent":{},"sum_received":{"seconds":1,"bytes":1,"bits_per_second":8}}}`, wantErr: "retransmit"},
		{name: "nothing measured", in: `{"end":{"sum_sent":{"retransmits":0},"sum_received":{"seconds":0,"bytes":0,"bits_per_second":0}}}`, wantErr: "measured nothing"},
		{name: "not json", in: `iperf3: error`, wantErr: "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIperf([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseEthtoolFeatures(t *testing.T) {
	out := `Features for wgmesh0:
rx-checksumming: off [fixed]
tx-checksumming: on
	tx-checksum-ip-generic: on
tcp-segmentation-offload: on
	tx-tcp-segmentation: on
tx-udp-segmentation: off [requested on]
generic-receive-offload: on
`
	got := ParseEthtoolFeatures(out)
	want := map[string]bool{"rx-checksumming": false, "tx-checksumming": true, "tx-checksum-ip-generic": true,
		"tcp-segmentation-offload": true, "tx-tcp-segmentation": true, "tx-udp-segmentation": false, "generic-receive-offload": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
}

func TestParseProc(t *testing.T) {
	// A command name with spaces and a parenthesis must not shift fields.
	st, err := ParseProcStat("1234 (wire guard) go) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 12 0 100 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if st != (ProcStat{UserTicks: 250, SystemTicks: 75}) {
		t.Errorf("got %+v", st)
	}
	if _, err := ParseProcStat("garbage"); err == nil {
		t.Error("no error for garbage")
	}
	kb, err := ParseStatusKB("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n", "VmRSS")
	if err != nil || kb != 1024 {
		t.Errorf("VmRSS = %d, %v", kb, err)
	}
	if _, err := ParseStatusKB("Name:\tx\n", "VmRSS"); err == nil {
		t.Error("no error for a missing key")
	}
	c, err := ParseSystemCPU("cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 1 2 3\n")
	if err != nil {
		t.Fatal(err)
	}
	if c != (SystemCPU{Busy: 165, Total: 1185}) {
		t.Errorf("got %+v", c)
	}
	ls, err := ParseIPLinkStats([]byte(`[{"ifname":"eth0","stats64":{"rx":{"bytes":10,"packets":1},"tx":{"bytes":3000,"packets":2}}}]`))
	if err != nil || ls != (LinkStats{TxBytes: 3000, TxPackets: 2, RxBytes: 10, RxPackets: 1}) {
		t.Errorf("got %+v, %v", ls, err)
	}
}

func TestStats(t *testing.T) {
	if m := Median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median odd = %v", m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.99: 99, 1: 100, 0: 1} {
		if got := Percentile(d, q); got != want {
			t.Errorf("p%v = %v, want %v", q, got, want)
		}
	}
}

func TestEchoRequestChecksum(t *testing.T) {
	b := echoRequest(0x1234, 7)
	// The one's complement sum over a packet with a correct checksum is
	// 0xffff.
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	if sum != 0xffff || b[0] != 8 || b[4] != 0x12 || b[7] != 7 {
		t.Errorf("bad echo request % x (sum %#x)", b, sum)
	}
	ts, ok := ProbeReply("probing\n" + probeReply + " 1700000000123456789\n")
	if !ok || ts.UnixNano() != 1700000000123456789 {
		t.Errorf("ProbeReply = %v, %v", ts, ok)
	}
	if _, ok := ProbeReply("probing\n"); ok {
		t.Error("reply found in output without one")
	}
}

// TestTargets checks that the verdicts follow the numbers, in both
// directions.
func TestTargets(t *testing.T) {
	bulk := func(g float64, retr float64) map[string]*BulkSeries {
		m := map[string]*BulkSeries{}
		for _, bc := range BulkConfigs {
			bs := &BulkSeries{}
			bs.Gbps.Add(g)
			bs.Retransmits.Add(retr)
			bs.SystemCPUPerGbit.Add(0.5)
			bs.DaemonCPUPerGbit.Add(1.0)
			m[bc.Key()] = bs
		}
		return m
	}
	mk := func(label string, v Variant, g float64) *VariantResult {
		r := &VariantResult{Label: label, Variant: v, UnderlayMTU: 1500, Bulk: bulk(g, 0), RSSIdleMB: 10, PrivateIdleMB: 5, RSSPeakMB: 100,
			Offloads: Offloads{TSO: true, USO: true}, CaptureMaxBytes: 60000}
		r.RRP50.Add(100)
		r.RRP99.Add(200)
		return r
	}
	rep := &Report{Passes: []Pass{{Name: "standard", UnderlayMTU: 1500, Variants: []*VariantResult{
		mk("plain", Plain, 20), mk("upstream", Upstream, 2.5), mk("debian", Debian, 0.8), mk("wgmesh", WGMesh, 2.6),
	}}}}
	verdicts := func() map[string]bool {
		m := map[string]bool{}
		for _, tg := range rep.Targets() {
			if !tg.Missing {
				m[tg.Name] = tg.Met
			}
		}
		return m
	}
	v := verdicts()
	for _, name := range []string{"wgmesh throughput ≥ 1.0× upstream, every shape", "wgmesh throughput ≥ 2.5× Debian, every shape",
		"wgmesh: 0 retransmits", "wgmesh private memory ≤ 10 MiB idle (Private_Dirty)",
		"wgmesh: 0 retransmits in the median run of each shape (issue 15)",
		"wgmesh CPU per Gbit (both daemons) ≤ upstream's, every shape (issue 15)"} {
		if !v[name] {
			t.Errorf("%q not met: %v", name, v)
		}
	}
	wm := rep.Passes[0].get("wgmesh")
	wm.Bulk["4×rev"].Gbps = Series{}
	wm.Bulk["4×rev"].Gbps.Add(2.4)
	wm.Bulk["1×fwd"].Retransmits.Add(1)
	wm.PrivateIdleMB = 10.5
	// One run of three with retransmits leaves the median at 0.
	for _, x := range []float64{0, 0} {
		wm.Bulk["1×fwd"].Retransmits.Add(x)
	}
	wm.Bulk["4×fwd"].DaemonCPUPerGbit = Series{}
	wm.Bulk["4×fwd"].DaemonCPUPerGbit.Add(1.01)
	v = verdicts()
	if !v["wgmesh: 0 retransmits in the median run of each shape (issue 15)"] {
		t.Errorf("median retransmits 0 judged missed: %v", wm.Bulk["1×fwd"].Retransmits)
	}
	for _, name := range []string{"wgmesh throughput ≥ 1.0× upstream, every shape", "wgmesh: 0 retransmits",
		"wgmesh private memory ≤ 10 MiB idle (Private_Dirty)", "wgmesh throughput ≥ 1.2× upstream, every shape (issue 15 stretch)",
		"wgmesh CPU per Gbit (both daemons) ≤ upstream's, every shape (issue 15)"} {
		if v[name] {
			t.Errorf("%q met with numbers that miss it", name)
		}
	}
	wm.Bulk["4×rev"].Retransmits = Series{}
	wm.Bulk["4×rev"].Retransmits.Add(3)
	if v := verdicts(); v["wgmesh: 0 retransmits in the median run of each shape (issue 15)"] {
		t.Error("median retransmits 3 judged met")
	}
	for _, bs := range wm.Bulk {
		bs.Gbps = Series{}
		bs.Gbps.Add(3.0) // 1.2× upstream's 2.5
	}
	if v := verdicts(); !v["wgmesh throughput ≥ 1.2× upstream, every shape (issue 15 stretch)"] {
		t.Error("1.2× upstream judged below the stretch target")
	}
	if md := rep.Markdown(); !strings.Contains(md, "**missed**") || !strings.Contains(md, "| 1×fwd |") {
		t.Errorf("markdown:\n%s", md)
	}

	// The same-lab rows appear only with the upstream-lab baseline, and
	// judge against it, not against upstream.
	sameLab := "wgmesh throughput ≥ 1.0× upstream on the same lab (upstream-lab), every shape"
	if _, ok := verdicts()[sameLab]; ok {
		t.Errorf("%q judged without an upstream-lab pair", sameLab)
	}
	std := &rep.Passes[0]
	std.Variants = append(std.Variants, mk(UpstreamLabExtra.Label, Upstream, 3.2))
	if v, ok := verdicts()[sameLab]; !ok || v {
		t.Errorf("%q: judged %v (present %v), want missed (3.0 vs 3.2)", sameLab, v, ok)
	}
	std.get(UpstreamLabExtra.Label).Bulk = bulk(2.9, 0)
	if !verdicts()[sameLab] {
		t.Errorf("%q missed with 3.0 vs 2.9", sameLab)
	}
	if md := rep.Markdown(); !strings.Contains(md, "wgmesh/upstream-lab |") || !strings.Contains(md, " 1.03× |\n") {
		t.Errorf("markdown without the same-lab ratio:\n%s", md)
	}
}

// TestPairedRatio: the same-lab swap baseline is judged by the median of
// run-by-run ratios, which differs from the ratio of medians when the
// machine drifts between runs.
func TestPairedRatio(t *testing.T) {
	series := func(vals ...float64) map[string]*BulkSeries {
		m := map[string]*BulkSeries{}
		for _, bc := range BulkConfigs {
			bs := &BulkSeries{}
			for _, v := range vals {
				bs.Gbps.Add(v)
				bs.DaemonCPUPerGbit.Add(1)
			}
			m[bc.Key()] = bs
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		wm, sw []float64
		want   float64
		pairs  string // how the 1×fwd figure reads in the target
	}{
		// Medians 2.0 vs 1.9 (1.05×), but wgmesh lost to its neighbour in
		// two runs of three.
		{"drift", []float64{1.0, 2.0, 2.6}, []float64{1.1, 2.1, 1.9}, 2.0 / 2.1, "1×fwd 0.95× (1 of 3 pairs ≥ 1.0)"},
		{"even", []float64{2, 2}, []float64{1, 2}, 1.5, "1×fwd 1.50× (2 of 2 pairs ≥ 1.0)"},
		{"one side shorter", []float64{2, 4, 8}, []float64{1, 2}, 2, "1×fwd 2.00× (2 of 2 pairs ≥ 1.0)"},
		{"no runs", nil, nil, math.NaN(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wm := &VariantResult{Label: "wgmesh", Variant: WGMesh, Bulk: series(tc.wm...)}
			sw := &VariantResult{Label: UpstreamSwapExtra.Label, Variant: Upstream, Bulk: series(tc.sw...)}
			got := pairedRatio(wm, sw, "1×fwd")
			if math.IsNaN(tc.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-tc.want) > 1e-9) {
				t.Fatalf("pairedRatio = %v, want %v", got, tc.want)
			}
			if len(tc.wm) == 0 {
				return
			}
			rep := &Report{Passes: []Pass{{Name: "standard", Variants: []*VariantResult{wm, sw}}}}
			name := "wgmesh throughput ≥ 1.0× upstream taking turns on the same lab (upstream-swap; median of paired runs), every shape"
			found := false
			for _, tg := range rep.Targets() {
				if tg.Name == name {
					found = true
					if tg.Met != (tc.want >= 1) {
						t.Errorf("%s: met %v at %.3f×: %s", name, tg.Met, tc.want, tg.Measured)
					}
					if !strings.Contains(tg.Measured, tc.pairs) {
						t.Errorf("%s: measured %q, want it to say %q", name, tg.Measured, tc.pairs)
					}
				}
			}
			if !found {
				t.Errorf("no %q target", name)
			}
			if md := rep.Markdown(); !strings.Contains(md, "wgmesh/upstream-swap (paired) |") {
				t.Errorf("markdown without the paired column:\n%s", md)
			}
		})
	}
}
