package cnitest

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkAddLatency measures one CNI ADD as a runtime sees it: libcni
// execs the built plugin, which sets up a veth, an address and routes in a
// pod namespace on a node with resident pods. Only the ADD is timed; the
// DEL that frees a pod slot for the next round is not. It reports the
// median and 99th percentile. Run it with a fixed count, e.g.
//
//	go test -run '^$' -bench AddLatency -benchtime 300x ./integration/cni/
func BenchmarkAddLatency(b *testing.B) {
	const resident = 32
	n := newNode(b, "10.244.128.0/18", false)
	slots := make([]*pod, resident)
	for i := range slots {
		slots[i] = n.newPod(fmt.Sprintf("s%d", i))
	}
	occupied := make([]bool, resident)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		slot := i % resident
		p := slots[slot]
		if occupied[slot] {
			b.StopTimer()
			if err := n.del(p); err != nil {
				b.Fatal(err)
			}
			p.id = fmt.Sprintf("%s-s%d-%d", n.prefix, slot, i) // a new container in the old sandbox slot
			b.StartTimer()
		}
		start := time.Now()
		if _, err := n.add(p); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		occupied[slot] = true
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.Logf("ADD latency over %d ADDs: p50 %s, p99 %s, max %s", len(lat), pct(0.50), pct(0.99), lat[len(lat)-1])
	for i, p := range slots {
		if occupied[i] {
			if err := n.del(p); err != nil {
				b.Error(err)
			}
		}
	}
}
