package agent

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

func TestMemoryTrimmer(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name string
		// cpuShare is the agent's CPU use as a share of one CPU.
		cpuShare          float64
		reclaimable, scan uint64
		wantIdleTrims     bool
	}{
		{"idle with garbage", 0.001, 2 * mib, 5 * mib, true},
		{"busy data path", 0.5, 64 * mib, 5 * mib, false},
		{"idle, little to give back", 0.001, mib / 2, 5 * mib, false},
		// A small heap: 1 MiB is above 256 KiB + 4 MiB/8.
		{"idle, a MiB of garbage on a small heap", 0.001, mib, 4 * mib, true},
		// 5000 peers: 250 MiB to scan; 20 MiB free is under 256 KiB + scan/8.
		{"idle large heap, a small share free", 0.001, 20 * mib, 250 * mib, false},
		{"idle large heap, much free", 0.001, 40 * mib, 250 * mib, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			var released, looked atomic.Int32
			tr := &memoryTrimmer{
				every: 5 * time.Millisecond,
				log:   slog.New(slog.DiscardHandler),
				now:   time.Now,
				cpuTime: func() time.Duration {
					looked.Add(1)
					return time.Duration(tt.cpuShare * float64(time.Since(start)))
				},
				heap:    func() (uint64, uint64) { return tt.reclaimable, tt.scan },
				release: func() { released.Add(1) },
			}
			ctx, cancel := context.WithCancel(context.Background())
			settled := make(chan struct{})
			done := make(chan struct{})
			go func() { tr.run(ctx, settled); close(done) }()
			defer func() { cancel(); <-done }()

			// Nothing before start-up is over.
			time.Sleep(30 * time.Millisecond)
			if n := released.Load(); n != 0 {
				t.Fatalf("%d trims before start-up settled", n)
			}
			close(settled)
			// 20 periods looked at (cpuTime is read once per period,
			// and once more after each trim); polled, so that a
			// loaded machine only makes the test slower.
			deadline := time.Now().Add(30 * time.Second)
			for looked.Load() < 21 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			n := released.Load()
			if n < 1 {
				t.Fatalf("no start-up trim")
			}
			idle := n - 1
			if tt.wantIdleTrims && idle < 5 {
				t.Errorf("%d idle trims in %d looks, want at least 5", idle, looked.Load())
			}
			if !tt.wantIdleTrims && idle != 0 {
				t.Errorf("%d idle trims, want none", idle)
			}
		})
	}
}

// TestMemoryTrimmerAfterLoad: when a busy period ends the trimmer runs
// two cycles (a sync.Pool's victim cache outlives one), even though the
// heap figures show nothing to give back, and only once per busy period.
func TestMemoryTrimmerAfterLoad(t *testing.T) {
	var clock, cpu time.Duration // advanced by the test, one period per look
	var released int
	tr := &memoryTrimmer{
		log:     slog.New(slog.DiscardHandler),
		now:     func() time.Time { return time.Unix(0, 0).Add(clock) },
		cpuTime: func() time.Duration { return cpu },
		heap:    func() (uint64, uint64) { return 0, 5 << 20 },
		release: func() { released++ },
	}
	// look is one period of run's loop, driven by hand rather than by the
	// ticker so that the phases are exact.
	look := tr.looker()
	period := func(busy bool) int {
		clock += trimEvery
		if busy {
			cpu += trimEvery / 2
		}
		before := released
		look()
		return released - before
	}
	steps := []struct {
		busy bool
		want int
	}{
		{false, 0}, {false, 0}, // idle, nothing reclaimable
		{true, 0}, {true, 0}, // load
		{false, 2}, {false, 0}, {false, 0}, // the load ended: two cycles, once
		{true, 0}, {false, 2}, // a second busy period
	}
	for i, s := range steps {
		if got := period(s.busy); got != s.want {
			t.Errorf("period %d (busy %v): %d trims, want %d", i, s.busy, got, s.want)
		}
	}
}

func TestHeapReclaimable(t *testing.T) {
	// The runtime has the four figures (a Go update that renamed one
	// would silently turn idle trimming off).
	sink = make([]byte, 1<<20)
	sink = nil
	reclaimable, scan := heapReclaimable()
	if scan == 0 {
		t.Errorf("scannable heap 0 (reclaimable %d): a runtime metric is missing", reclaimable)
	}
}

var sink []byte
