package wgdev

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// gatedBind holds every datagram sent while the gate is closed. flush
// sends what it holds and keeps the gate closed; open sends it and opens.
type gatedBind struct {
	conn.Bind
	mu     sync.Mutex
	open   bool
	queued []func() error
}

func (b *gatedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		cp := make([][]byte, len(bufs))
		for i := range bufs {
			cp[i] = bytes.Clone(bufs[i])
		}
		b.queued = append(b.queued, func() error { return b.Bind.Send(cp, ep) })
		return nil
	}
	return b.Bind.Send(bufs, ep)
}

func (b *gatedBind) flush(open bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.queued {
		f()
	}
	b.queued, b.open = nil, open
}

func (b *gatedBind) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queued)
}

// syncBuffer is a log sink safe for the device's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newGreetPair is a quietPair whose devices are each other's peer (with
// endpoints), added through the UAPI socket as wg(8) would.
func newGreetPair(t *testing.T) *quietPair {
	t.Helper()
	p := newQuietPair(t)
	for i := range p.devs {
		pub := p.keys[1-i].PublicKey()
		uapiSet(t, p.socks[i], fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=10.244.%d.0/24\n",
			hex.EncodeToString(pub[:]), p.endpoint(t, 1-i), 2-i))
	}
	return p
}

// watching reports whether d's greeter watches key.
func watching(d *Device, key wgtypes.Key) bool {
	d.greeter.mu.Lock()
	defer d.greeter.mu.Unlock()
	_, ok := d.greeter.watched[key]
	return ok
}

// greetedSilent waits until d's watch has decided on the peers given to
// GreetSilent (it does so at its next check, in its own goroutine).
func greetedSilent(t *testing.T, d *Device) {
	t.Helper()
	start := time.Now()
	for {
		d.greeter.mu.Lock()
		n := len(d.greeter.silent)
		d.greeter.mu.Unlock()
		if n == 0 {
			return
		}
		// Bound: the next check comes at once (GreetSilent wakes it);
		// 5 s is room for a loaded machine.
		if time.Since(start) > 5*time.Second {
			t.Fatalf("GreetSilent: %d peers still undecided after 5s", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGreetSilent: a peer without a session is greeted (by the smaller
// key an initiation leaves at once; the larger key only watches, to
// initiate after answerWait); one with a session is left alone.
func TestGreetSilent(t *testing.T) {
	p := newGreetPair(t)
	// a is the smaller key: it initiates.
	a, b := 0, 1
	if !initiates(p.keys[0].PublicKey(), p.keys[1].PublicKey()) {
		a, b = 1, 0
	}
	p.devs[b].GreetSilent(p.keys[a].PublicKey())
	greetedSilent(t, p.devs[b])
	if n := p.gates[b].held(); n != 0 {
		t.Fatalf("the larger key sent %d datagrams after greeting a silent peer, want none (the smaller key initiates)", n)
	}
	if !watching(p.devs[b], p.keys[a].PublicKey()) {
		t.Error("larger key: silent peer greeted but not watched")
	}
	peer := p.keys[b].PublicKey()
	p.devs[a].GreetSilent(peer)
	greetedSilent(t, p.devs[a])
	if n := p.gates[a].held(); n != 1 {
		t.Fatalf("%d datagrams sent after greeting a silent peer, want the initiation", n)
	}
	if !watching(p.devs[a], peer) {
		t.Error("silent peer greeted but not watched")
	}
	p.gates[a].flush(true)
	p.gates[b].flush(true)
	start := time.Now()
	// Bound: one round trip over in-memory channels; 5 s is room for a
	// loaded machine.
	for !hs(t, p.socks[a]) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("no session 5s after the greeting\nlog %d:\n%s", a, p.logs[a])
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.devs[a].greeter.mu.Lock()
	clear(p.devs[a].greeter.watched)
	p.devs[a].greeter.mu.Unlock()
	p.devs[a].GreetSilent(peer)
	greetedSilent(t, p.devs[a])
	if watching(p.devs[a], peer) {
		t.Error("peer with a session greeted again")
	}
}

// TestGreetRepairsCrossedHandshakes makes both devices initiate to each
// other with initiations that cross (the state a fresh mesh under load
// got stuck in for 5 s and more; a fresh pair no longer greets from both
// sides, but pod traffic or a restart can still make both initiate) and
// checks that the pair has a session long before WireGuard's own 5 s
// retry.
func TestGreetRepairsCrossedHandshakes(t *testing.T) {
	p := newGreetPair(t)
	devs, keys, socks, gates, logs := p.devs, p.keys, p.socks, p.gates, p.logs
	for i := range devs {
		devs[i].greeter.greetAll(keys[1-i].PublicKey())
	}
	// Both initiations are on their way before either is answered, and
	// both answers only after both initiations were answered: they cross,
	// whatever order wireguard-go's handshake workers take them in.
	start := time.Now()
	for _, g := range gates {
		if n := g.held(); n != 1 {
			t.Fatalf("%d datagrams held after the greeting, want the initiation only", n)
		}
		g.flush(false)
	}
	for _, g := range gates {
		for g.held() == 0 {
			if time.Since(start) > 10*time.Second {
				t.Fatal("no answer to the initiation within 10s")
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, g := range gates {
		g.flush(true)
	}

	// The bound: the repair comes after repairEvery (0.25 s); 3 s leaves
	// a loaded machine 2.75 s for two round trips over in-memory channels
	// and stays below WireGuard's own retry (5 s), which would otherwise
	// be what repaired it.
	const bound = 3 * time.Second
	for {
		if hs(t, socks[0]) && hs(t, socks[1]) {
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("no session on both sides %s after crossed greetings\nlog 0:\n%s\nlog 1:\n%s", bound, logs[0], logs[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("session on both sides %s after the crossed greetings", time.Since(start).Round(time.Millisecond))
	// The gates made the greetings cross: each side dropped the answer
	// to its own initiation.
	for i, l := range logs {
		if !strings.Contains(l.String(), "Received invalid response message") {
			t.Errorf("device %d: the greetings did not cross (no dropped response in its log); the test tests nothing", i)
		}
	}
	// Only the smaller key repaired: its repair came long before the
	// larger key's answerWait (1 s), so the larger key had no reason to
	// initiate again (and cross the repair).
	for i, l := range logs {
		p0, p1 := keys[i].PublicKey(), keys[1-i].PublicKey()
		smaller := bytes.Compare(p0[:], p1[:]) < 0
		if repaired := strings.Contains(l.String(), "initiating again"); repaired != smaller {
			t.Errorf("device %d (smaller key: %v) repaired: %v", i, smaller, repaired)
		}
	}
}

// hs reports whether the only peer on the device has completed a handshake.
func hs(t *testing.T, sock string) bool {
	t.Helper()
	v := uapiGet(t, sock)["last_handshake_time_sec"]
	return v != "" && v != "0"
}

func TestPeerStates(t *testing.T) {
	priv := mustKey(t)
	a, b := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	in := fmt.Sprintf("private_key=%s\nlisten_port=51820\n"+
		"public_key=%s\nendpoint=198.51.100.12:51820\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nallowed_ip=10.244.2.0/24\n"+
		"public_key=%s\nlast_handshake_time_sec=1796278507\nlast_handshake_time_nsec=5\nerrno=0\n",
		hex.EncodeToString(priv[:]), hex.EncodeToString(a[:]), hex.EncodeToString(b[:]))
	d, err := parseGet([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if d.PublicKey != priv.PublicKey() {
		t.Errorf("own key = %s, want %s", d.PublicKey, priv.PublicKey())
	}
	want := map[wgtypes.Key]peerState{a: {endpoint: true}, b: {handshake: true}}
	if diff := cmp.Diff(want, peerStates(d), cmp.AllowUnexported(peerState{})); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
}

// TestGreetRepairBudget: many peers that never answer get their repairs
// within the budget (burst + rate × time, not one initiation per peer per
// backoff), and the budget goes to the peers with the fewest repairs first,
// so every peer is repaired before any is repaired twice in a row of them.
func TestGreetRepairBudget(t *testing.T) {
	const (
		peers = 100
		burst = 10
		per   = 50 // repairs per second
	)
	p := newQuietPair(t) // gates closed: no initiation is ever answered
	g := p.devs[0].greeter
	g.mu.Lock()
	g.repairs = rate.NewLimiter(per, burst)
	g.mu.Unlock()

	var body strings.Builder
	keys := make([]wgtypes.Key, peers)
	for i := range keys {
		keys[i] = mustKey(t).PublicKey()
		fmt.Fprintf(&body, "public_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=10.244.%d.0/24\n",
			hex.EncodeToString(keys[i][:]), 40000+i, 100+i)
	}
	uapiSet(t, p.socks[0], body.String())
	start := time.Now()
	g.greetAll(keys...)

	repairs := func() (total, least int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		least = -1
		for _, k := range keys {
			w, ok := g.watched[k]
			if !ok {
				t.Fatalf("peer %s no longer watched", k)
			}
			total += w.repairs
			if least < 0 || w.repairs < least {
				least = w.repairs
			}
		}
		return total, least
	}

	time.Sleep(1500 * time.Millisecond)
	total, _ := repairs()
	// Read after the count, so the allowance is never too small.
	allowed := burst + int(per*time.Since(start).Seconds()) + 1
	t.Logf("%d repairs of %d silent peers in the first %s (budget %d)", total, peers, time.Since(start).Round(time.Millisecond), allowed)
	if total > allowed {
		t.Errorf("%d repairs, want at most %d (burst %d + %d/s)", total, allowed, burst, per)
	}

	// That the watch repairs at all, and fewest first: every peer gets
	// its first repair in about peers/per = 2 s; 10 s leaves a loaded
	// machine room.
	for {
		total, least := repairs()
		if least >= 1 {
			t.Logf("every peer repaired after %s (%d repairs)", time.Since(start).Round(time.Millisecond), total)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("after %s some peer has no repair yet (%d repairs in all)", time.Since(start).Round(time.Millisecond), total)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
