package agent

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestMemoryBase(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name        string
		maxInflight int
		want        int64
	}{
		// The shipped default: what docs/benchmarks.md measured (96 MiB).
		{"default bound", 0, 96 * mib},
		{"explicit default", 256, 96 * mib},
		{"tighter bound", 64, 64*mib + 2*64*64<<10},
		{"wider bound", 1024, 64*mib + 2*1024*64<<10},
		// No bound: wireguard-go's live heap is 200+ MiB under bulk
		// load, a tight limit would make the GC run without pause.
		{"no bound", -1, 192 * mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := memoryBase(tt.maxInflight); got != tt.want {
				t.Errorf("memoryBase(%d) = %d MiB, want %d MiB", tt.maxInflight, got/mib, tt.want/mib)
			}
		})
	}
	if DefaultMemoryLimit != memoryBase(0) {
		t.Errorf("DefaultMemoryLimit %d, memoryBase(0) %d", DefaultMemoryLimit, memoryBase(0))
	}
}

func TestMemoryLimiter(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	limit := func() int64 { return debug.SetMemoryLimit(-1) }
	noEnv := func(string) (string, bool) { return "", false }

	debug.SetMemoryLimit(math.MaxInt64)
	m := newMemoryLimiter(true, 0, noEnv)
	if got := limit(); got != DefaultMemoryLimit {
		t.Fatalf("limit with no peers %d, want %d", got, DefaultMemoryLimit)
	}
	m.observe(5000)
	if got, want := limit(), int64(DefaultMemoryLimit+5000*MemoryPerPeer); got != want {
		t.Errorf("limit with 5000 peers %d, want %d", got, want)
	}
	m.observe(1)
	if got, want := limit(), int64(DefaultMemoryLimit+MemoryPerPeer); got != want {
		t.Errorf("limit back at 1 peer %d, want %d", got, want)
	}

	// The base follows the device's in-flight bound.
	m = newMemoryLimiter(true, -1, noEnv)
	m.observe(2)
	if got, want := limit(), memoryBase(-1)+2*MemoryPerPeer; got != want {
		t.Errorf("limit with no in-flight bound, 2 peers %d, want %d", got, want)
	}

	// GOMEMLIMIT set: the runtime's own value is never touched.
	debug.SetMemoryLimit(math.MaxInt64)
	m = newMemoryLimiter(true, 0, func(k string) (string, bool) { return "off", k == "GOMEMLIMIT" })
	m.observe(100)
	if got := limit(); got != math.MaxInt64 {
		t.Errorf("limit %d with GOMEMLIMIT set, want it untouched", got)
	}

	// MemoryLimitOff: neither.
	m = newMemoryLimiter(false, 0, noEnv)
	m.observe(100)
	if got := limit(); got != math.MaxInt64 {
		t.Errorf("limit %d with the limiter off, want it untouched", got)
	}
}
