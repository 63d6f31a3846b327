package agent

import "runtime/debug"

// The Go runtime's soft memory limit, unless the GOMEMLIMIT environment
// variable sets one (GOMEMLIMIT=off removes it): DefaultMemoryLimit plus
// MemoryPerPeer for every peer. Under bulk load wireguard-go holds a
// 64 KiB buffer per packet in flight and its pools keep what they once
// needed: without a limit the heap grows to 400+ MiB and stays there. A
// limit makes the GC hand pooled buffers back, at a throughput cost that
// grows as the limit shrinks (integration/bench, 2 cores: 192 MiB about
// -7%, 160 MiB -16%, 128 MiB -20%, 100 MiB -30%; see docs/benchmarks.md),
// so the default is 192 MiB and memory-tight nodes can set GOMEMLIMIT.
// Each peer costs about 25 KiB in wireguard-go and the reconciler plus its
// Node in the informer cache (the bench's scale figures), so the limit
// grows with the mesh: a fixed one would make the GC run without pause in
// a large cluster.
const (
	DefaultMemoryLimit = 192 << 20
	MemoryPerPeer      = 48 << 10
)

// memoryLimiter keeps the soft limit in step with the peer count.
type memoryLimiter struct {
	enabled bool
	peers   int
}

// newMemoryLimiter sets the limit for no peers, unless GOMEMLIMIT is set
// or enabled is false.
func newMemoryLimiter(enabled bool, lookupEnv func(string) (string, bool)) *memoryLimiter {
	_, set := lookupEnv("GOMEMLIMIT")
	m := &memoryLimiter{enabled: enabled && !set, peers: -1}
	m.observe(0)
	return m
}

func (m *memoryLimiter) observe(peers int) {
	if !m.enabled || peers == m.peers {
		return
	}
	m.peers = peers
	debug.SetMemoryLimit(DefaultMemoryLimit + int64(peers)*MemoryPerPeer)
}
