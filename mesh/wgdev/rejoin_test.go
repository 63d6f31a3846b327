package wgdev

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestRemovals(t *testing.T) {
	a, b, c := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	ep := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 12), Port: 51820}
	t0 := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	removed := wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: a, Remove: true}, {PublicKey: b, Remove: true},
		{PublicKey: c, Endpoint: ep}, // added, not removed
	}}
	tests := []struct {
		name  string
		peers []wgtypes.PeerConfig
		after time.Duration
		want  map[wgtypes.Key]bool
	}{
		{"both back soon", []wgtypes.PeerConfig{{PublicKey: a, Endpoint: ep}, {PublicKey: b, Endpoint: ep}}, time.Second, map[wgtypes.Key]bool{a: true, b: true}},
		{"back at the window's end", []wgtypes.PeerConfig{{PublicKey: a, Endpoint: ep}}, rejoinWindow, map[wgtypes.Key]bool{a: true}},
		{"back after the window", []wgtypes.PeerConfig{{PublicKey: a, Endpoint: ep}}, rejoinWindow + time.Second, nil},
		{"never removed", []wgtypes.PeerConfig{{PublicKey: c, Endpoint: ep}}, time.Second, nil},
		{"back without an endpoint (cannot be greeted)", []wgtypes.PeerConfig{{PublicKey: a}}, time.Second, nil},
		{"an update only", []wgtypes.PeerConfig{{PublicKey: a, Endpoint: ep, UpdateOnly: true}}, time.Second, nil},
		{"removed again", []wgtypes.PeerConfig{{PublicKey: a, Remove: true}}, time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r removals
			r.note(removed, t0)
			got := r.returning(nil, wgtypes.Config{Peers: tt.peers}, t0.Add(tt.after))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("returning (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("forget and prune", func(t *testing.T) {
		var r removals
		r.note(removed, t0)
		r.forget(map[wgtypes.Key]bool{a: true})
		if got := r.returning(nil, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: a, Endpoint: ep}, {PublicKey: b, Endpoint: ep}}}, t0.Add(time.Second)); !cmp.Equal(got, map[wgtypes.Key]bool{b: true}) {
			t.Errorf("after forgetting a: %v, want only b", got)
		}
		// A later write prunes what is past the window: the map holds
		// only the last window's removals, however many came before.
		r.note(wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: c, Remove: true}}}, t0.Add(rejoinWindow+time.Second))
		if _, ok := r.at[b]; ok || len(r.at) != 1 {
			t.Errorf("after a write past the window: %v, want only c", r.at)
		}
	})
}

// TestReturningPeerGreetedAtOnce: a working pair, then one side removes
// the other and adds it again (its Node deleted and re-created while the
// other agent kept running). The other side still holds its session and
// does not initiate. Whichever key re-adds, the pair must carry packets
// again well before answerWait: before rejoin.go the larger key waited
// answerWait (1 s) for an initiation that never came.
func TestReturningPeerGreetedAtOnce(t *testing.T) {
	for _, readder := range []string{"larger key", "smaller key"} {
		t.Run("re-added by the "+readder, func(t *testing.T) {
			p := newQuietPair(t)
			small, large := 0, 1
			if !initiates(p.keys[0].PublicKey(), p.keys[1].PublicKey()) {
				small, large = 1, 0
			}
			x, j := large, small
			if readder == "smaller key" {
				x, j = small, large
			}
			for _, g := range p.gates {
				g.flush(true)
			}
			eps := [2]string{p.endpoint(t, 0), p.endpoint(t, 1)}
			p.add(t, 0, eps[1], 0)
			p.add(t, 1, eps[0], 0)
			for i := range 2 {
				if !p.pings(i, 3*time.Second) {
					t.Fatalf("the fresh pair carries no ping from %d to %d", i, 1-i)
				}
			}

			// Pings still under way: a device's receiver blocks
			// writing one into a TUN nobody reads, and removing
			// its peer waits for that receiver; and one arriving
			// later must not count as the new session's first.
			p.drain()
			rm := wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: p.keys[j].PublicKey(), Remove: true}}}
			if err := p.devs[x].Local().ConfigureDevice(rm); err != nil {
				t.Fatal(err)
			}
			p.drain()

			// What the re-adding side sends as it adds the peer is
			// the load-independent check: its greeting, whichever
			// key is smaller (quietly, the larger key sent nothing).
			// The time below is the effect, with 500 times the
			// usual 1-2 ms of room before answerWait.
			p.gates[x].flush(false)
			start := time.Now()
			p.add(t, x, eps[j], 0)
			if n := p.gates[x].held(); n == 0 {
				t.Errorf("the re-adding side sent nothing as it added the peer, want its greeting")
			}
			p.gates[x].flush(true)
			if !p.firstPing(x, 3*time.Second) {
				t.Fatalf("no ping from the re-adding side within 3s\nlog %d:\n%s\nlog %d:\n%s", x, p.logs[x], j, p.logs[j])
			}
			took := time.Since(start)
			t.Logf("ping through %s after the peer was added again", took.Round(time.Millisecond))
			if took >= answerWait {
				t.Errorf("first ping %s after the re-add, not before answerWait (%s): the re-adding side waited for an initiation the other side had no reason to send", took, answerWait)
			}
		})
	}
}

// drain reads both TUNs until nothing arrived for 300 ms.
func (p *quietPair) drain() {
	for {
		select {
		case <-p.tuns[0].Inbound:
		case <-p.tuns[1].Inbound:
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

// firstPing sends pings from device i's side to the other's pod prefix,
// one every 20 ms, until one arrives there (true) or bound passes. Unlike
// pings it notices an arrival within milliseconds.
func (p *quietPair) firstPing(i int, bound time.Duration) bool {
	src := netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", 1+i))
	dst := netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", 2-i))
	deadline := time.After(bound)
	for {
		select {
		case p.tuns[i].Outbound <- tuntest.Ping(dst, src):
		case <-deadline:
			return false
		}
		select {
		case <-p.tuns[1-i].Inbound:
			return true
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			return false
		}
	}
}

// TestBothPeersReturning: both Nodes deleted and re-created within the
// window, so each side removes the other and adds it again. Neither holds a
// session any more, both count the other as returning and both greet: the
// one case where the rule lets initiations cross (rejoin.go). The gates
// deliver the two greetings together, the order that can trip wireguard-go's
// handshake race (quiet.go); whatever the race does, the pair must carry
// packets both ways again within WireGuard's 15-s new-handshake repair.
func TestBothPeersReturning(t *testing.T) {
	const bound = 20 * time.Second // the race's 15 s and room
	for trial := range 3 {
		p := newQuietPair(t)
		for _, g := range p.gates {
			g.flush(true)
		}
		eps := [2]string{p.endpoint(t, 0), p.endpoint(t, 1)}
		p.add(t, 0, eps[1], 0)
		p.add(t, 1, eps[0], 0)
		for i := range 2 {
			if !p.pings(i, 3*time.Second) {
				t.Fatalf("trial %d: the fresh pair carries no ping from %d to %d", trial, i, 1-i)
			}
		}

		p.drain()
		for i := range 2 {
			rm := wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: p.keys[1-i].PublicKey(), Remove: true}}}
			if err := p.devs[i].Local().ConfigureDevice(rm); err != nil {
				t.Fatal(err)
			}
		}
		p.drain()
		for _, g := range p.gates {
			g.flush(false)
		}
		start := time.Now()
		p.add(t, 0, eps[1], 0)
		p.add(t, 1, eps[0], 0)
		for i := range 2 {
			if n := p.gates[i].held(); n == 0 {
				t.Errorf("trial %d: device %d sent nothing as it added its returning peer, want its greeting", trial, i)
			}
		}
		p.gates[0].flush(true)
		p.gates[1].flush(true)
		for _, i := range []int{0, 1} {
			if !p.firstPing(i, bound) {
				t.Fatalf("trial %d: no ping from %d to %d within %s of both re-adds\nlog 0:\n%s\nlog 1:\n%s", trial, i, 1-i, bound, p.logs[0], p.logs[1])
			}
		}
		t.Logf("trial %d: pings both ways %s after both re-adds", trial, time.Since(start).Round(time.Millisecond))
	}
}
