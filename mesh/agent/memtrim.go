package agent

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"syscall"
	"time"
)

// Handing the heap's free pages back to the kernel while the agent is idle.
//
// wireguard-go allocates its read batches up front (3 readers × 128 × 64 KiB
// = 24 MiB) and they stay untouched, so not resident, until packets arrive;
// but the Go runtime counts them as live heap. With GOGC=100 the GC
// therefore lets 24+ MiB of garbage pile up before it runs (or until its
// 2-minute forced cycle), and its scavenger keeps 10% of that inflated heap
// as free pages it does not return. On an idle node, the agent's private
// memory grew from 8 to 12 MiB over 10 minutes that way (integration/lab,
// 2026-12-05), all of it garbage and free pages, while its live objects
// stayed the same. The trimmer returns them once after start-up (the
// informers' initial lists are the biggest garbage the agent makes) and then
// whenever a period passed in which the agent was idle and enough is
// reclaimable, or the first idle period after a busy one (see looker).
const (
	// trimEvery is how often the trimmer looks: the agent's own resync
	// period, so that an idle agent does at most one extra GC per pass.
	trimEvery = 30 * time.Second
	// trimIdleCPU is the share of one CPU below which the agent counts as
	// idle: a data path carrying traffic uses far more, and trimming then
	// would only have the pools' pages faulted back in.
	trimIdleCPU = 0.02
	// trimMinBytes is the least worth a GC cycle (on an idle agent with a
	// small heap one costs a few ms of CPU: at most one per trimEvery);
	// with 1 MiB an idle lab agent's private memory swung between 9.5 and
	// 10.6 MiB, with 256 KiB between 9.3 and 9.9, at no more CPU
	// (docs/benchmarks.md, issue 15 round 6).
	// trimMinScanShift adds
	// scan>>trimMinScanShift, the heap a GC cycle has to scan (what it
	// costs; the untouched read batches hold no pointers and cost
	// nothing), so that a large mesh (hundreds of MiB to scan, 100+ ms of
	// CPU) trims only when it gives back an eighth of that.
	trimMinBytes     = 256 << 10
	trimMinScanShift = 3
)

// memoryTrimmer releases free heap pages (debug.FreeOSMemory) after
// start-up and in idle periods. Its fields are the process's clocks and the
// runtime's figures, replaced in tests.
type memoryTrimmer struct {
	every   time.Duration
	log     *slog.Logger
	now     func() time.Time
	cpuTime func() time.Duration
	// heap returns what a GC and a scavenge could give back (free pages
	// not yet released, and objects allocated since the last GC that may
	// be garbage) and the scannable heap (a GC cycle's work).
	heap    func() (reclaimable, scan uint64)
	release func()
}

func newMemoryTrimmer(log *slog.Logger) *memoryTrimmer {
	return &memoryTrimmer{
		every:   trimEvery,
		log:     log,
		now:     time.Now,
		cpuTime: processCPU,
		heap:    heapReclaimable,
		release: debug.FreeOSMemory,
	}
}

// run trims once when settled is closed and then looks every t.every,
// until ctx ends.
func (t *memoryTrimmer) run(ctx context.Context, settled <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-settled:
	}
	t.trim("start-up")
	look := t.looker()
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			look()
		}
	}
}

// looker returns one period's look: it measures the CPU used since the
// last look and trims when the agent was idle and a trim is worth it.
func (t *memoryTrimmer) looker() func() {
	lastWall, lastCPU := t.now(), t.cpuTime()
	wasBusy := false
	return func() {
		wall, cpu := t.now(), t.cpuTime()
		busy := t.busy(wall.Sub(lastWall), cpu-lastCPU)
		lastWall, lastCPU = wall, cpu
		switch {
		case busy:
			wasBusy = true
			return
		case wasBusy:
			// The load just ended. wireguard-go's buffer pools are
			// sync.Pools: what they hold counts as live (heap figures
			// cannot see it) and survives one GC in the victim cache,
			// so it would only go over two of the runtime's 2-minute
			// forced GCs (a lab receiver: 66 MiB private, 26 MiB four
			// minutes later). Two cycles now hand it back. At most
			// once per busy period, which cost more than they do.
			wasBusy = false
			t.trim("after load")
			t.trim("after load")
		default:
			if reclaimable, scan := t.heap(); reclaimable < trimMinBytes+scan>>trimMinScanShift {
				return
			}
			t.trim("idle")
		}
		// The trim's own GC is not the agent's work.
		lastCPU = t.cpuTime()
	}
}

// busy says whether the agent used more than trimIdleCPU of a CPU over a
// period.
func (t *memoryTrimmer) busy(wall, cpu time.Duration) bool {
	return wall <= 0 || float64(cpu) > trimIdleCPU*float64(wall)
}

func (t *memoryTrimmer) trim(why string) {
	start := t.now()
	t.release()
	t.log.Debug("returned free memory to the kernel", "why", why, "took", t.now().Sub(start))
}

// processCPU is the CPU time the process used so far (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapReclaimable reads the runtime's figures for memoryTrimmer.heap.
func heapReclaimable() (reclaimable, scan uint64) {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/gc/scan/heap:bytes"},
	}
	metrics.Read(s)
	for _, x := range s {
		if x.Value.Kind() != metrics.KindUint64 {
			return 0, 0 // a runtime without them: never trim when idle
		}
	}
	free, objects, live := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
	reclaimable = free
	if objects > live {
		reclaimable += objects - live
	}
	return reclaimable, s[3].Value.Uint64()
}
