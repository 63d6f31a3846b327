package wgdev

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultMaxInflight is Config.MaxInflight's default: packets per direction
// that wireguard-go may hold between reading them (from the TUN or the UDP
// socket) and handing them on (to the UDP socket or the TUN).
//
// wireguard-go gives every packet segment its own 64 KiB buffer and queues
// up to 1024 batches per stage, so under bulk load its heap is bounded only
// by the TCP windows of the flows through it: 4 streams held 160-215 MiB of
// buffers (integration/bench heap profiles, docs/benchmarks.md "Issue 15").
// Past this bound we stop reading: the packets wait in the kernel instead (the
// TUN's queue, the UDP socket's 7 MiB receive buffer) as one skb per GSO/GRO
// batch, about 1/46 of the memory they take in wireguard-go, and TCP sees
// the wait as delay, not loss. 256 × 64 KiB = 16 MiB per direction: in the
// bench sweep (docs/benchmarks.md) 256 held the peak RSS at 129 MiB where
// 512 let it reach 160 and no bound 205, with throughput at or above both.
// Buffers staged for a peer without a session (up to wireguard-go's 128
// staged batches) count too: the bound is kept well above that, so that a
// dead peer cannot take all of it.
const DefaultMaxInflight = 256

// inflightStall is how long a reader waits for the other end to release
// buffers before it assumes the ones it counts were dropped inside
// wireguard-go (no peer for the address, no session yet, a packet that fails
// to decrypt) and forgets them all. The pipeline hands a batch on in well
// under a millisecond, so a stall this long, in which the process did run
// (see wait), means loss, and waiting longer would only add delay.
const inflightStall = 10 * time.Millisecond

// inflightStalls counts, for the whole process, the times a wait gave up
// (see inflight.wait): the harness records it beside the memory it measures,
// since each one lets up to the bound's worth of buffers more in.
var inflightStalls atomic.Uint64

// InflightStalls is how often, in this process, a reader stopped waiting for
// the in-flight bound because nothing was released for a stall period.
func InflightStalls() uint64 { return inflightStalls.Load() }

// inflightMaxLate bounds the stall periods in a row a wait sits out
// because its timer fired late: 10 × 10 ms and more of being descheduled.
const inflightMaxLate = 10

// inflight bounds the buffers held between the two ends of one direction of
// wireguard-go's pipeline. It tracks buffers by address, not a count: a
// buffer wireguard-go drops goes back to its pool and, when it is read into
// again, is counted once, so drops cannot make the bound drift; a buffer the
// pool lets go is forgotten at the next stall (see wait).
type inflight struct {
	limit int
	stall time.Duration    // inflightStall; tests set it
	now   func() time.Time // time.Now; tests set it
	// maxLate is how many late periods in a row a wait sits out before it
	// judges one anyway (inflightMaxLate; tests set it).
	maxLate int

	mu       sync.Mutex
	held     addrSet
	wake     chan struct{} // closed when a waiter may go on
	released uint64        // buffers released so far: progress, for wait
	stalls   uint64        // times a waiter forgot everything (for tests and debugging)
	late     uint64        // times a waiter's timer fired too late to judge (for tests)
}

// newInflight sizes the held set for twice the limit: readers that passed
// wait add their whole batch, so it holds more than limit for a moment.
func newInflight(limit int) *inflight {
	return &inflight{limit: limit, stall: inflightStall, now: time.Now, maxLate: inflightMaxLate, held: newAddrSet(2 * limit), wake: make(chan struct{})}
}

// wait blocks until fewer than limit buffers are held. If for a whole
// inflightStall nothing was released, the buffers it counts were dropped
// inside wireguard-go; it then forgets them all and goes on. A wait that sees
// releases keeps waiting: on a loaded machine the other end may take longer
// than inflightStall for a batch, and forgetting buffers still in flight
// would undo the bound.
//
// A stall counts only if the timer fired on time. On a loaded 2-core box
// the whole process is often descheduled for tens of milliseconds; the timer
// then fires late, and the pipeline, descheduled with it, had no chance to
// release anything. Forgetting then let a bound's worth of buffers more in
// (8-11 stalls per node in one 4-shape bench run at load 7-14, before this
// rule), so a late timer only starts another period, up to maxLate periods
// in a row: buffers that are really lost must not stop the data path for
// as long as the machine stays loaded.
func (f *inflight) wait() {
	f.mu.Lock()
	if f.held.len() < f.limit {
		f.mu.Unlock()
		return
	}
	mark := f.released
	armed := f.now()
	lateRun := 0 // late periods in a row
	t := time.NewTimer(f.stall)
	defer t.Stop()
	for f.held.len() >= f.limit {
		wake := f.wake
		f.mu.Unlock()
		select {
		case <-wake:
			f.mu.Lock()
		case <-t.C:
			f.mu.Lock()
			now := f.now()
			late := now.Sub(armed) > f.stall+f.stall/2 && lateRun < f.maxLate
			if f.released != mark || late {
				if late {
					f.late++
					lateRun++
				} else {
					lateRun = 0
				}
				mark, armed = f.released, now
				t.Reset(f.stall)
				continue
			}
			f.held.clear()
			f.stalls++
			inflightStalls.Add(1)
			f.signal()
		}
	}
	f.mu.Unlock()
}

// signal wakes the waiters; f.mu is held.
func (f *inflight) signal() {
	close(f.wake)
	f.wake = make(chan struct{})
}

// hold records the first n buffers as handed into the pipeline.
func (f *inflight) hold(bufs [][]byte, n int) {
	f.mu.Lock()
	for _, b := range bufs[:n] {
		if cap(b) > 0 {
			f.held.add(bufAddr(b))
		}
	}
	f.mu.Unlock()
}

// release records buffers as handed out of the pipeline. Buffers never held
// (handshakes, keepalives, cookie replies) are ignored.
func (f *inflight) release(bufs [][]byte) {
	f.mu.Lock()
	before := f.held.len()
	for _, b := range bufs {
		if cap(b) > 0 {
			f.held.remove(bufAddr(b))
		}
	}
	f.released += uint64(before - f.held.len())
	if before >= f.limit && f.held.len() < f.limit {
		f.signal()
	}
	f.mu.Unlock()
}

// bufAddr identifies a buffer by its first byte. wireguard-go reads into,
// encrypts in, and writes from the start of its message buffers, so the
// same buffer shows the same address at both ends. Go's heap does not move
// objects; an address reused by a new buffer after the old one was freed
// only corrects a stale entry.
func bufAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// boundedTUN bounds outbound packets: Read waits while too many buffers read
// from the TUN have not yet reached the UDP socket (boundedBind.Send).
type boundedTUN struct {
	tun.Device
	out *inflight // released by boundedBind.Send
	in  *inflight // held by boundedBind's receive functions
}

func (t *boundedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.out.wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	if n > 0 {
		t.out.hold(bufs, n)
	}
	return n, err
}

func (t *boundedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	// Released whatever the outcome: wireguard-go returns them to its pool.
	t.in.release(bufs)
	return n, err
}

// boundedBind bounds inbound packets: its receive functions wait while too
// many data packets received have not yet been written to the TUN
// (boundedTUN.Write).
//
// Wrapping conn.StdNetBind costs one thing: wireguard-go starts its route
// listener (which drops a peer's cached source address when routes change)
// only for a bare *conn.StdNetBind. Without it, a stale source address is
// dropped at the next handshake retransmission (wireguard-go's timers do that
// too), and a packet from the peer sets it afresh.
type boundedBind struct {
	conn.Bind
	out *inflight
	in  *inflight
}

func (b *boundedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return fns, actual, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = b.receive(fn)
	}
	return wrapped, actual, nil
}

// dataMinSize is the smallest WireGuard transport message carrying data:
// type, receiver, counter (16 bytes), at least one content byte, the 16-byte
// tag. Shorter ones (keepalives) and other types never reach the TUN.
const dataMinSize = 16 + 1 + 16

func (b *boundedBind) receive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		b.in.wait()
		n, err := fn(packets, sizes, eps)
		if n > 0 {
			b.in.mu.Lock()
			for i, p := range packets[:n] {
				// Message type 4 (transport data), little endian.
				if sizes[i] >= dataMinSize && p[0] == 4 && p[1] == 0 && p[2] == 0 && p[3] == 0 {
					b.in.held.add(bufAddr(p))
				}
			}
			b.in.mu.Unlock()
		}
		return n, err
	}
}

func (b *boundedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	// Before the send: conn.StdNetBind coalesces the batch into its first
	// buffers (UDP GSO), and the buffers go back to wireguard-go's pool
	// after Send whatever its outcome.
	b.out.release(bufs)
	return b.Bind.Send(bufs, ep)
}

// bound wraps a TUN and a bind so that each direction holds at most limit
// packets inside wireguard-go.
func bound(t tun.Device, b conn.Bind, limit int) (tun.Device, conn.Bind) {
	out, in := newInflight(limit), newInflight(limit)
	return &boundedTUN{Device: t, out: out, in: in}, &boundedBind{Bind: b, out: out, in: in}
}
