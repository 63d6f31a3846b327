package main

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestMemoryLimiter(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	limit := func() int64 { return debug.SetMemoryLimit(-1) }

	debug.SetMemoryLimit(math.MaxInt64)
	m := newMemoryLimiter(func(string) (string, bool) { return "", false })
	if got := limit(); got != defaultMemoryLimit {
		t.Fatalf("limit with no peers %d, want %d", got, defaultMemoryLimit)
	}
	m.observe(5000)
	if got, want := limit(), int64(defaultMemoryLimit+5000*memoryPerPeer); got != want {
		t.Errorf("limit with 5000 peers %d, want %d", got, want)
	}
	m.observe(1)
	if got, want := limit(), int64(defaultMemoryLimit+memoryPerPeer); got != want {
		t.Errorf("limit back at 1 peer %d, want %d", got, want)
	}

	// GOMEMLIMIT set: the runtime's own value is never touched.
	debug.SetMemoryLimit(math.MaxInt64)
	m = newMemoryLimiter(func(k string) (string, bool) { return "off", k == "GOMEMLIMIT" })
	m.observe(100)
	if got := limit(); got != math.MaxInt64 {
		t.Errorf("limit %d with GOMEMLIMIT set, want it untouched", got)
	}
}
