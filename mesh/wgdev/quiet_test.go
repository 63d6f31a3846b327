package wgdev

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// recordBind records what reaches it.
type recordBind struct {
	conn.Bind
	sent []string
}

func (b *recordBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	for _, p := range bufs {
		b.sent = append(b.sent, fmt.Sprintf("%d->%s", p[0], ep.DstToString()))
	}
	return nil
}

func TestHoldBind(t *testing.T) {
	init := make([]byte, device.MessageInitiationSize)
	init[0] = device.MessageInitiationType
	resp := make([]byte, device.MessageResponseSize)
	resp[0] = device.MessageResponseType
	data := make([]byte, device.MessageInitiationSize) // same size, another type
	data[0] = device.MessageTransportType
	held := bindtest.ChannelEndpoint(7)  // 127.0.0.1:7
	other := bindtest.ChannelEndpoint(8) // 127.0.0.1:8
	tests := []struct {
		name  string
		bufs  [][]byte
		ep    conn.Endpoint
		hold  bool
		want  int // datagrams passed on
		drops int
	}{
		{"initiation to a held endpoint", [][]byte{init}, held, true, 0, 1},
		{"initiation to another endpoint", [][]byte{init}, other, true, 1, 0},
		{"initiation after the release", [][]byte{init}, held, false, 1, 0},
		{"response to a held endpoint", [][]byte{resp}, held, true, 1, 0},
		{"data of an initiation's size", [][]byte{data}, held, true, 1, 0},
		{"a batch", [][]byte{init, init}, held, true, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordBind{}
			b := newHoldBind(rec)
			release := b.hold([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:7")})
			if !tt.hold {
				release()
			}
			if err := b.Send(tt.bufs, tt.ep); err != nil {
				t.Fatal(err)
			}
			if len(rec.sent) != tt.want || b.dropped != tt.drops {
				t.Errorf("passed on %v, dropped %d; want %d passed, %d dropped", rec.sent, b.dropped, tt.want, tt.drops)
			}
			release()
			if len(b.held) != 0 {
				t.Errorf("held after release: %v", b.held)
			}
		})
	}
}

// quietPair is two in-memory devices with TUNs the test reads and writes,
// their sends held back by gates, that do not know each other yet.
type quietPair struct {
	devs  [2]*Device
	keys  [2]wgtypes.Key
	tuns  [2]*tuntest.ChannelTUN
	socks [2]string
	gates [2]*gatedBind
	logs  [2]*syncBuffer
}

func newQuietPair(t *testing.T) *quietPair {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	dir := t.TempDir()
	p := &quietPair{}
	for i := range p.devs {
		p.keys[i] = mustKey(t)
		p.tuns[i] = tuntest.NewChannelTUN()
		p.socks[i] = filepath.Join(dir, fmt.Sprintf("wg%d.sock", i))
		p.gates[i] = &gatedBind{Bind: binds[i]}
		p.logs[i] = &syncBuffer{}
		sock := p.socks[i]
		d, err := New(Config{
			Name: fmt.Sprintf("wgq%d", i), MTU: 1420, PrivateKey: p.keys[i],
			Logger: slog.New(slog.NewTextHandler(p.logs[i], &slog.HandlerOptions{Level: slog.LevelDebug})),
			tun:    p.tuns[i].TUN(),
			bind:   p.gates[i],
			listen: func(string) (net.Listener, error) { return net.Listen("unix", sock) },
			linkUp: func(string) error { return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Open(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		p.devs[i] = d
	}
	return p
}

// add makes device i add the other as the agent does: one write through
// Local (the reconciler's device), then Greet for the added peer.
func (p *quietPair) add(t *testing.T, i int, endpoint string, keepalive time.Duration) {
	t.Helper()
	ep, err := net.ResolveUDPAddr("udp", endpoint)
	if err != nil {
		t.Fatal(err)
	}
	_, pods, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", 2-i))
	peer := p.keys[1-i].PublicKey()
	cfg := wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: peer, Endpoint: ep, PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{*pods},
	}}}
	if err := p.devs[i].Local().ConfigureDevice(cfg); err != nil {
		t.Fatal(err)
	}
	p.devs[i].Greet(peer)
}

// endpoint is device i's address as the other device reaches it.
func (p *quietPair) endpoint(t *testing.T, i int) string {
	return "127.0.0.1:" + uapiGet(t, p.socks[i])["listen_port"]
}

// pings sends a ping from device i's side to the other's pod prefix every
// 100 ms until one arrives there or bound passes.
func (p *quietPair) pings(i int, bound time.Duration) bool {
	src := netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", 1+i))
	dst := netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", 2-i))
	deadline := time.After(bound)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case p.tuns[i].Outbound <- tuntest.Ping(dst, src):
			<-tick.C
		case <-p.tuns[1-i].Inbound:
			return true
		case <-deadline:
			return false
		}
	}
}

// TestFreshPairOneInitiator adds two devices to each other at the same
// moment, as two agents that see each other's Node at once do, and lets
// the datagrams through in the order that used to break pairs: the one
// initiation first, its answer together with anything else. Only the
// smaller key may have initiated (with a keepalive too, which makes
// WireGuard send one as the peer is added), and the pair must then carry
// packets both ways.
//
// Without the fix both devices initiate: the initiations cross, and when
// a device gets the other's initiation and the answer to its own at once,
// wireguard-go's handshake workers race (quiet.go) and 1-2 crossings in
// 150 left a session that drops everything one side sends for 15 s.
func TestFreshPairOneInitiator(t *testing.T) {
	for _, keepalive := range []time.Duration{0, 25 * time.Second} {
		t.Run("keepalive "+keepalive.String(), func(t *testing.T) {
			// A few fresh pairs: the keys, hence the roles, differ
			// each time.
			for trial := range 5 {
				p := newQuietPair(t)
				small, large := 0, 1
				if !initiates(p.keys[0].PublicKey(), p.keys[1].PublicKey()) {
					small, large = 1, 0
				}
				eps := [2]string{p.endpoint(t, 0), p.endpoint(t, 1)}
				p.add(t, 0, eps[1], keepalive)
				p.add(t, 1, eps[0], keepalive)
				if n := p.gates[large].held(); n != 0 {
					t.Fatalf("trial %d: the larger key sent %d datagrams when it added its peer, want none: its initiation would cross the smaller key's", trial, n)
				}
				if n := p.gates[small].held(); n != 1 {
					t.Fatalf("trial %d: the smaller key sent %d datagrams when it added its peer, want its initiation", trial, n)
				}
				p.devs[large].hold.mu.Lock()
				dropped := p.devs[large].hold.dropped
				p.devs[large].hold.mu.Unlock()
				if dropped == 0 {
					t.Fatalf("trial %d: the larger key held back no initiation: WireGuard's hold-off did not start", trial)
				}
				p.gates[small].flush(false)
				start := time.Now()
				for p.gates[large].held() == 0 {
					if time.Since(start) > 5*time.Second {
						t.Fatalf("trial %d: no answer to the initiation within 5s", trial)
					}
					time.Sleep(time.Millisecond)
				}
				p.gates[large].flush(true)
				p.gates[small].flush(true)
				// Bound: a round trip and a ping over in-memory
				// channels, with room for a loaded machine; the
				// broken session of the race lasts 15 s.
				const bound = 3 * time.Second
				for i := range 2 {
					if !p.pings(i, bound) {
						t.Fatalf("trial %d: no ping from device %d to %d within %s\nlog 0:\n%s\nlog 1:\n%s",
							trial, i, 1-i, bound, p.logs[0], p.logs[1])
					}
				}
				for _, d := range p.devs {
					d.Close()
				}
			}
		})
	}
}

// TestLargerKeyInitiatesWhenNotReached: the smaller key cannot reach the
// larger key's endpoint (a NAT, another address family), so only the
// larger key's own initiation can make the session. It must come after
// answerWait, well before WireGuard's own retry (5 s).
func TestLargerKeyInitiatesWhenNotReached(t *testing.T) {
	p := newQuietPair(t)
	small, large := 0, 1
	if !initiates(p.keys[0].PublicKey(), p.keys[1].PublicKey()) {
		small, large = 1, 0
	}
	for _, g := range p.gates {
		g.flush(true)
	}
	start := time.Now()
	// Port 9 is no device's: the in-memory bind refuses to send there.
	p.add(t, small, "127.0.0.1:"+strconv.Itoa(9), 0)
	p.add(t, large, p.endpoint(t, small), 0)
	// Bound: answerWait (1 s), a round trip, and room for a loaded
	// machine; WireGuard's own retry would come after 5 s.
	const bound = 4 * time.Second
	for !hs(t, p.socks[small]) || !hs(t, p.socks[large]) {
		if time.Since(start) > bound {
			t.Fatalf("no session on both sides %s after the larger key added its unreachable peer\nlog small:\n%s\nlog large:\n%s",
				bound, p.logs[small], p.logs[large])
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	if took < answerWait {
		t.Errorf("session after %s, before answerWait (%s): the larger key did not wait for the smaller one", took, answerWait)
	}
	t.Logf("session on both sides %s after the pair was added", took.Round(time.Millisecond))
}
