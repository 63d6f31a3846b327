package wgdev

import (
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func buffers(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 64)
	}
	return bufs
}

// waitReturns reports whether f.wait returns within d.
func waitReturns(f *inflight, d time.Duration) bool {
	done := make(chan struct{})
	go func() { f.wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func TestInflightWaitsForRelease(t *testing.T) {
	f := newInflight(4)
	// This test is about releases waking the waiter; with the real 10 ms
	// stall a descheduled test goroutine (a loaded 2-core box) would let
	// the waiter give up and look like a wrong wake-up.
	f.stall = time.Minute
	bufs := buffers(4)
	f.hold(bufs, 3)
	if !waitReturns(f, time.Second) {
		t.Fatal("wait blocked below the limit")
	}
	// The same buffer read again (wireguard-go dropped it and reused it)
	// counts once.
	f.hold(bufs[:1], 1)
	if !waitReturns(f, time.Second) {
		t.Fatal("a buffer held twice counted twice")
	}
	f.hold(bufs[3:], 1) // 4: at the limit

	done := make(chan struct{})
	go func() { f.wait(); close(done) }()
	// Releasing a buffer never held (a handshake) must not wake the
	// waiter.
	f.release([][]byte{make([]byte, 64)})
	select {
	case <-done:
		t.Fatal("wait returned with the limit still held")
	case <-time.After(50 * time.Millisecond):
	}
	f.release(bufs[3:])
	select {
	case <-done:
	case <-time.After(5 * time.Second): // generous: the waiter only needs to run
		t.Fatal("wait did not return after a release")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held.len() != 3 || f.stalls != 0 {
		t.Errorf("held %d, stalls %d after one release; want 3, 0", f.held.len(), f.stalls)
	}
}

func TestInflightForgetsAfterStall(t *testing.T) {
	f := newInflight(2)
	bufs := buffers(2)
	f.hold(bufs, 2)
	before := InflightStalls()
	start := time.Now()
	// Nothing is ever released (wireguard-go dropped them): the waiter
	// goes on after inflightStall, forgetting what it counted.
	if !waitReturns(f, 5*time.Second) {
		t.Fatal("wait did not give up on buffers never released")
	}
	if d := time.Since(start); d < inflightStall {
		t.Errorf("gave up after %v, want ≥ %v", d, inflightStall)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held.len() != 0 || f.stalls != 1 {
		t.Errorf("after a stall: held %d, stalls %d; want 0, 1", f.held.len(), f.stalls)
	}
	// Other tests of the package may stall too (tests run one by one
	// unless they call t.Parallel, which these do not).
	if got := InflightStalls() - before; got != 1 {
		t.Errorf("InflightStalls grew by %d, want 1", got)
	}
}

// lateClock is a clock for inflight.now that, from its second reading on,
// reads an hour later at every reading: every timer looks late, as in a
// process descheduled for longer than the stall period.
func lateClock() func() time.Time {
	var skew time.Duration
	return func() time.Time {
		now := time.Now().Add(skew)
		skew += time.Hour
		return now
	}
}

func TestInflightLateTimer(t *testing.T) {
	tests := []struct {
		name    string
		maxLate int
		// want: whether wait gives up (forgets) on its own, and the late
		// periods it sits out.
		givesUp  bool
		wantLate uint64
	}{
		// A late timer says nothing about the pipeline: keep waiting
		// until a release.
		{"late timers are sat out", 1 << 30, false, 0},
		// But not forever: lost buffers must not stop the data path on
		// a box that stays loaded.
		{"up to maxLate in a row", 3, true, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newInflight(2)
			f.stall = 5 * time.Millisecond
			f.now = lateClock()
			f.maxLate = tt.maxLate
			bufs := buffers(2)
			f.hold(bufs, 2)
			done := make(chan struct{})
			go func() { f.wait(); close(done) }()
			if !tt.givesUp {
				// 100 stall periods, every one late.
				select {
				case <-done:
					t.Fatal("wait gave up on late timers")
				case <-time.After(500 * time.Millisecond):
				}
				f.release(bufs[:1])
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second): // a loaded 2-core box; normally milliseconds
				t.Fatal("wait did not return")
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			wantStalls := uint64(0)
			if tt.givesUp {
				wantStalls = 1
			}
			if f.stalls != wantStalls {
				t.Errorf("stalls %d, want %d", f.stalls, wantStalls)
			}
			if tt.givesUp && f.late != tt.wantLate {
				t.Errorf("late periods %d, want %d", f.late, tt.wantLate)
			}
			if !tt.givesUp && f.late == 0 {
				t.Error("no late period counted in 500 ms of 5 ms periods")
			}
		})
	}
}

func TestInflightKeepsWaitingWhileReleasing(t *testing.T) {
	f := newInflight(2)
	// Long enough that the releases below, 0.4 s apart, each come well
	// inside one stall period even on a loaded 2-core box (a sleep
	// overrunning by 4.6 s).
	f.stall = 5 * time.Second
	bufs := buffers(4)
	f.hold(bufs, 4) // a batch past the limit
	done := make(chan struct{})
	go func() { f.wait(); close(done) }()
	for i, b := range bufs[:3] {
		time.Sleep(400 * time.Millisecond)
		f.release([][]byte{b})
		if i < 2 {
			select {
			case <-done:
				t.Fatalf("wait returned with %d of 4 released and the limit 2", i+1)
			default:
			}
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return below the limit")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stalls != 0 || f.held.len() != 1 {
		t.Errorf("stalls %d, held %d; want 0 (releases are progress: 1.2 s of them is no stall), 1", f.stalls, f.held.len())
	}
}

// fakeBind receives the packets it is given, once.
type fakeBind struct {
	conn.Bind
	packets [][]byte
	sent    int
}

func (b *fakeBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	fn := func(bufs [][]byte, sizes []int, _ []conn.Endpoint) (int, error) {
		for i, p := range b.packets {
			sizes[i] = copy(bufs[i], p)
		}
		return len(b.packets), nil
	}
	return []conn.ReceiveFunc{fn}, 51820, nil
}

func (b *fakeBind) Send(bufs [][]byte, _ conn.Endpoint) error { b.sent += len(bufs); return nil }

func TestBoundedBindCountsDataOnly(t *testing.T) {
	transport := func(size int) []byte {
		p := make([]byte, size)
		p[0] = 4
		return p
	}
	handshake := make([]byte, 148)
	handshake[0] = 1
	inner := &fakeBind{packets: [][]byte{transport(100), transport(32) /* keepalive */, handshake, transport(33)}}
	_, b := bound(tuntest.NewChannelTUN().TUN(), inner, 8)
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bufs, sizes := buffers(4), make([]int, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 256)
	}
	n, err := fns[0](bufs, sizes, make([]conn.Endpoint, 4))
	if err != nil || n != 4 {
		t.Fatalf("receive: %d, %v", n, err)
	}
	in := b.(*boundedBind).in
	if got := in.held.len(); got != 2 {
		t.Errorf("held %d after receiving 2 data packets, a keepalive and a handshake; want 2", got)
	}
	// Written to the TUN: released.
	b.(*boundedBind).in.release([][]byte{bufs[0], bufs[3]})
	if got := in.held.len(); got != 0 {
		t.Errorf("held %d after the TUN write, want 0", got)
	}
}

// TestBoundedPairCarriesBursts sends bursts through two devices whose
// bound is far below the burst: every packet arrives, nothing deadlocks.
func TestBoundedPairCarriesBursts(t *testing.T) {
	nodes := newTestPairWith(t, func(c *Config) { c.MaxInflight = 2 })
	for i, n := range nodes {
		other := nodes[1-i]
		pub := other.key.PublicKey()
		port := uapiGet(t, other.sock)["listen_port"]
		uapiSet(t, n.sock, fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\n",
			hex.EncodeToString(pub[:]), port, other.ip))
	}
	// One packet first: the handshake. Packets read before it are
	// staged, and wireguard-go drops the oldest past 128.
	ping := tuntest.Ping(nodes[1].ip, nodes[0].ip)
	nodes[0].tun.Outbound <- ping
	select {
	case <-nodes[1].tun.Inbound:
	case <-time.After(10 * time.Second):
		t.Fatal("first packet did not cross the tunnel")
	}
	const burst = 200
	received := make(chan int)
	go func() {
		got := 0
		timeout := time.After(30 * time.Second) // a loaded 2-core box; normally well under a second
		for got < burst {
			select {
			case <-nodes[1].tun.Inbound:
				got++
			case <-timeout:
				received <- got
				return
			}
		}
		received <- got
	}()
	for i := range burst {
		select {
		case nodes[0].tun.Outbound <- ping:
		case <-time.After(10 * time.Second):
			t.Fatalf("node 0 stopped reading its TUN after %d packets", i)
		}
	}
	if got := <-received; got != burst {
		t.Fatalf("%d of %d packets crossed the bounded tunnel", got, burst)
	}
}
