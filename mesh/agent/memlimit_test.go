package agent

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestMemoryLimiter(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	limit := func() int64 { return debug.SetMemoryLimit(-1) }
	noEnv := func(string) (string, bool) { return "", false }

	debug.SetMemoryLimit(math.MaxInt64)
	m := newMemoryLimiter(true, noEnv)
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

	// GOMEMLIMIT set: the runtime's own value is never touched.
	debug.SetMemoryLimit(math.MaxInt64)
	m = newMemoryLimiter(true, func(k string) (string, bool) { return "off", k == "GOMEMLIMIT" })
	m.observe(100)
	if got := limit(); got != math.MaxInt64 {
		t.Errorf("limit %d with GOMEMLIMIT set, want it untouched", got)
	}

	// MemoryLimitOff: neither.
	m = newMemoryLimiter(false, noEnv)
	m.observe(100)
	if got := limit(); got != math.MaxInt64 {
		t.Errorf("limit %d with the limiter off, want it untouched", got)
	}
}
