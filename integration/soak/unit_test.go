package soak

import (
	"testing"
	"time"
)

func TestLossCounters(t *testing.T) {
	tests := []struct {
		name         string
		listing      string
		all, dropped int
		wantErr      bool
	}{
		{"listed", "table inet wgmesh-soak {\n\tchain soakout {\n\t\ttype filter hook output priority filter; policy accept;\n" +
			"\t\toifname \"eth0\" counter packets 2000 bytes 300000 numgen random mod 100 < 5 counter packets 97 bytes 14000 drop\n\t}\n}\n", 2000, 97, false},
		{"one counter", "oifname \"eth0\" counter packets 2000 bytes 300000 drop", 0, 0, true},
		{"none", "", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all, dropped, err := lossCounters(tt.listing)
			if (err != nil) != tt.wantErr || all != tt.all || dropped != tt.dropped {
				t.Errorf("lossCounters = %d, %d, %v; want %d, %d, error %v", all, dropped, err, tt.all, tt.dropped, tt.wantErr)
			}
		})
	}
}

func TestQueueDrops(t *testing.T) {
	proc := "    0  12345     0 1     0     0     0      17  1\n 1414 4026531   3 1     0     2     5    9381  1\n"
	tests := []struct {
		queue  int
		qd, ud int
		ok     bool
	}{
		{1414, 2, 5, true},
		{0, 0, 0, true},
		{7, 0, 0, false},
	}
	for _, tt := range tests {
		qd, ud, ok := queueDrops(proc, tt.queue)
		if qd != tt.qd || ud != tt.ud || ok != tt.ok {
			t.Errorf("queueDrops(%d) = %d, %d, %v; want %d, %d, %v", tt.queue, qd, ud, ok, tt.qd, tt.ud, tt.ok)
		}
	}
}

func TestLossBounds(t *testing.T) {
	tests := []struct {
		n      int
		lo, hi float64
	}{
		// 5 * sqrt(0.05 * 0.95 / n)
		{2000, 0.02563, 0.07437},
		{500, 0.00126, 0.09874},
		{100, 0, 0.15897},
		{0, 0, 1},
	}
	for _, tt := range tests {
		lo, hi := lossBounds(tt.n)
		if d := lo - tt.lo; d > 1e-4 || d < -1e-4 {
			t.Errorf("lossBounds(%d) low %.5f, want %.5f", tt.n, lo, tt.lo)
		}
		if d := hi - tt.hi; d > 1e-4 || d < -1e-4 {
			t.Errorf("lossBounds(%d) high %.5f, want %.5f", tt.n, hi, tt.hi)
		}
	}
}

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		ds   []time.Duration
		q    float64
		want time.Duration
	}{
		{ms(5, 1, 4, 2, 3), 0.5, 3 * time.Millisecond},
		{ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{ms(4, 1, 3, 2), 1, 4 * time.Millisecond},
		{ms(10, 20, 30, 40, 50, 60, 70, 80, 90, 100), 0.9, 90 * time.Millisecond},
		{nil, 0.5, 0},
	}
	for _, tt := range tests {
		if got := quantile(tt.ds, tt.q); got != tt.want {
			t.Errorf("quantile(%v, %v) = %s, want %s", tt.ds, tt.q, got, tt.want)
		}
	}
}

func TestTrend(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	var samples []agentSample
	for i := range 11 { // every 10 s from t0 to t0+100s
		samples = append(samples, agentSample{At: t0.Add(time.Duration(i) * 10 * time.Second), RSS: float64(i)})
	}
	var got []float64
	for _, a := range trend(samples, 4) { // t0, +25s, +50s, +75s, +100s
		got = append(got, a.RSS)
	}
	want := []float64{0, 2, 5, 7, 10} // +25s: 20s and 30s are as near; the first wins
	if len(got) != len(want) {
		t.Fatalf("trend = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("trend = %v, want %v", got, want)
		}
	}
	if got := trend(nil, 4); got != nil {
		t.Errorf("trend(nil) = %v, want nil", got)
	}
}

func TestFirstRoundPeak(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	at := func(s int, rss float64) agentSample {
		return agentSample{At: t0.Add(time.Duration(s) * time.Second), RSS: rss}
	}
	tests := []struct {
		name           string
		baseline, warm agentSample
		samples        []agentSample
		want           float64
	}{
		{"peak inside the round", at(0, 30), at(60, 40), []agentSample{at(0, 30), at(20, 55), at(40, 35), at(60, 40), at(80, 70)}, 55},
		// A later peak is not the first round's: a leak must show against it.
		{"later peaks ignored", at(0, 30), at(60, 40), []agentSample{at(0, 30), at(60, 40), at(70, 90)}, 40},
		{"the readings themselves", at(0, 50), at(60, 45), nil, 50},
		{"warm is the peak", at(0, 30), at(60, 61), []agentSample{at(30, 33)}, 61},
	}
	for _, tt := range tests {
		if got := firstRoundPeak(tt.baseline, tt.warm, tt.samples); got != tt.want {
			t.Errorf("%s: firstRoundPeak = %v, want %v", tt.name, got, tt.want)
		}
	}
}
