package agent

import (
	"runtime/debug"

	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// The Go runtime's soft memory limit, unless the GOMEMLIMIT environment
// variable sets one (GOMEMLIMIT=off removes it): a base that follows the
// device's in-flight bound (memoryBase) plus MemoryPerPeer for every peer.
//
// Why a limit at all: wireguard-go's buffers are 64 KiB each, pooled, and the
// GC runs only when the heap doubles (GOGC=100). Under 4-stream bulk load with
// the in-flight bound the live heap is 55-90 MiB (the bound's 2 × 256
// buffers, wireguard-go's read batches of 128 buffers per reader, the pool),
// so without a limit the heap and the RSS grow to twice that: 168-197 MiB
// (integration/bench node role, docs/benchmarks.md "Issue 15, round 2").
// Since the bound keeps the live heap small, and the buffers hold no
// pointers, a GC cycle is cheap: a limit of 96 MiB held the peak RSS at
// 111 MiB (node role, its 40 MiB binary included) with 23 GC cycles instead
// of 17 over the run and no throughput cost we could measure. Before the
// bound the live heap itself was 200+ MiB and every limit cost throughput,
// hence the old 192 MiB default; with the bound off that trade-off is still
// the one to make (unboundedMemoryLimit).
//
// Each peer costs 30-40 KiB in wireguard-go and the reconciler, 40-50 KiB
// with its Node in the informer caches (the bench's scale role, 2026-12-05),
// so the limit grows with the mesh: a fixed one would make the GC run
// without pause in a large cluster. MemoryPerPeer is twice that, the
// headroom GOGC=100 gives: at 48 KiB per peer the GC ran a third of the
// time in the scale role at 5000 Nodes and the periodic full pass took
// 85 ms instead of 45 (docs/benchmarks.md).
const (
	// DefaultMemoryLimit is the limit with no peers and the default
	// in-flight bound: 96 MiB.
	DefaultMemoryLimit = fixedMemory + 2*wgdev.DefaultMaxInflight*messageBufferSize
	MemoryPerPeer      = 96 << 10

	// fixedMemory is what the limit allows beside the packets in flight:
	// wireguard-go's read batches (3 readers × 128 × 64 KiB = 24 MiB, one
	// reader per socket and the TUN's), the agent's own heap (informers,
	// client-go: about 8 MiB) and the GC's headroom above the live heap.
	fixedMemory = 64 << 20
	// messageBufferSize is wireguard-go's buffer per packet
	// (device.MaxMessageSize).
	messageBufferSize = 64 << 10
	// unboundedMemoryLimit is the base with the in-flight bound off.
	unboundedMemoryLimit = 192 << 20
)

// memoryBase is the limit with no peers for a device with the given
// in-flight bound (wgdev.Config.MaxInflight: 0 its default, negative none).
func memoryBase(maxInflight int) int64 {
	switch {
	case maxInflight < 0:
		return unboundedMemoryLimit
	case maxInflight == 0:
		maxInflight = wgdev.DefaultMaxInflight
	}
	return fixedMemory + 2*int64(maxInflight)*messageBufferSize
}

// memoryLimiter keeps the soft limit in step with the peer count.
type memoryLimiter struct {
	enabled bool
	base    int64
	peers   int
}

// newMemoryLimiter sets the limit for no peers, unless GOMEMLIMIT is set
// or enabled is false.
func newMemoryLimiter(enabled bool, maxInflight int, lookupEnv func(string) (string, bool)) *memoryLimiter {
	_, set := lookupEnv("GOMEMLIMIT")
	m := &memoryLimiter{enabled: enabled && !set, base: memoryBase(maxInflight), peers: -1}
	m.observe(0)
	return m
}

func (m *memoryLimiter) observe(peers int) {
	if !m.enabled || peers == m.peers {
		return
	}
	m.peers = peers
	debug.SetMemoryLimit(m.base + int64(peers)*MemoryPerPeer)
}
