package wgdev

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestUAPIPeers(t *testing.T) {
	k1, k2 := mustKey(t).PublicKey(), mustKey(t).PublicKey()
	ka := 25 * time.Second
	tests := []struct {
		name  string
		peers []wgtypes.PeerConfig
		want  string
		err   error
	}{
		{name: "none", want: ""},
		{
			name: "full and minimal",
			peers: []wgtypes.PeerConfig{
				{
					PublicKey: k1, Endpoint: &net.UDPAddr{IP: net.ParseIP("198.51.100.12"), Port: 51820},
					PersistentKeepaliveInterval: &ka, ReplaceAllowedIPs: true,
					AllowedIPs: []net.IPNet{{IP: net.IP{10, 244, 2, 0}, Mask: net.CIDRMask(24, 32)}, {IP: net.ParseIP("fd00:10:244:2::"), Mask: net.CIDRMask(64, 128)}},
				},
				{PublicKey: k2, Endpoint: &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 51820}},
			},
			want: "public_key=" + hex.EncodeToString(k1[:]) + "\nendpoint=198.51.100.12:51820\npersistent_keepalive_interval=25\n" +
				"replace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=fd00:10:244:2::/64\n" +
				"public_key=" + hex.EncodeToString(k2[:]) + "\nendpoint=[2001:db8::1]:51820\n",
		},
		{name: "remove", peers: []wgtypes.PeerConfig{{PublicKey: k1, Remove: true}}, err: ErrInitialPeer},
		{name: "update only", peers: []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true}}, err: ErrInitialPeer},
		{name: "preshared key", peers: []wgtypes.PeerConfig{{PublicKey: k1, PresharedKey: &k2}}, err: ErrInitialPeer},
		{name: "zero key", peers: []wgtypes.PeerConfig{{}}, err: ErrInitialPeer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := uapiPeers(tt.peers)
			if !errors.Is(err, tt.err) {
				t.Fatalf("error = %v, want %v", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("uapiPeers =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestOpenRejectsBadInitialPeersBeforeTouchingAnything(t *testing.T) {
	d, err := New(Config{Name: "wgtest", MTU: 1420, PrivateKey: mustKey(t),
		Peers: []wgtypes.PeerConfig{{PublicKey: mustKey(t).PublicKey(), Remove: true}}})
	if err != nil {
		t.Fatal(err)
	}
	// No TUN seam: had Open got past validation it would have tried the
	// kernel's TUN.
	if err := d.Open(); !errors.Is(err, ErrInitialPeer) {
		t.Fatalf("Open error = %v, want ErrInitialPeer", err)
	}
}

// peerDevice opens a device on an in-memory TUN and bind with initial peers.
func peerDevice(t *testing.T, key wgtypes.Key, bind conn.Bind, sock string, peers []wgtypes.PeerConfig) (*Device, *tuntest.ChannelTUN) {
	t.Helper()
	ct := tuntest.NewChannelTUN()
	d, err := New(Config{
		Name: "wgtest", MTU: 1420, PrivateKey: key, Peers: peers,
		tun:    ct.TUN(),
		bind:   bind,
		listen: func(string) (net.Listener, error) { return net.Listen("unix", sock) },
		linkUp: func(string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Open(); err != nil {
		t.Fatalf("Open: %v", err)
	}
	return d, ct
}

// handshakeTime reads the first peer's latest handshake over UAPI.
func handshakeTime(t *testing.T, sock string) time.Time {
	t.Helper()
	m := uapiGet(t, sock)
	sec, _ := strconv.ParseInt(m["last_handshake_time_sec"], 10, 64)
	nsec, _ := strconv.ParseInt(m["last_handshake_time_nsec"], 10, 64)
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, nsec)
}

func waitHandshakeAfter(t *testing.T, sock string, after time.Time, what string) time.Time {
	t.Helper()
	// Generous for a loaded machine; the test logs how long it took, and
	// the "at once" timing on real sockets is held by integration/datapath's
	// TCP-through-restart test.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		if hs := handshakeTime(t, sock); hs.After(after) {
			return hs
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no handshake after %s", what, after.Format(time.RFC3339Nano))
	return time.Time{}
}

// drainBind opens b, discards what is waiting for it (at least one packet,
// waiting up to wait for the first) and closes it again. It returns only
// after its readers have stopped: the next Open of b (the device's) must
// not race a reader of this one.
func drainBind(t *testing.T, b conn.Bind, wait time.Duration) int {
	t.Helper()
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 64)
	done := make(chan struct{})
	var readers sync.WaitGroup
	for _, fn := range fns {
		readers.Go(func() {
			bufs, sizes, eps := [][]byte{make([]byte, 2048)}, make([]int, 1), make([]conn.Endpoint, 1)
			for {
				if _, err := fn(bufs, sizes, eps); err != nil {
					return // closed
				}
				select {
				case got <- struct{}{}:
				case <-done:
					return
				}
			}
		})
	}
	stop := func() {
		close(done)
		b.Close()
		readers.Wait()
	}
	n := 0
	timeout := time.After(wait)
	for n == 0 {
		select {
		case <-got:
			n++
		case <-timeout:
			stop()
			return 0
		}
	}
	// Anything sent in the same burst.
	for quiet := time.After(200 * time.Millisecond); ; {
		select {
		case <-got:
			n++
		case <-quiet:
			stop()
			return n
		}
	}
}

// TestInitialPeersHandshakeAtOnce is the agent restart in miniature: node B
// keeps running; node A starts with B as an initial peer, is stopped and
// started again. Each time A completes a handshake with B without a single
// data packet, and afterwards a packet that only B sends (B never learns
// that A restarted) reaches A's TUN straight away.
func TestInitialPeersHandshakeAtOnce(t *testing.T) {
	binds := bindtest.NewChannelBinds()
	dir := t.TempDir()
	keyA, keyB := mustKey(t), mustKey(t)
	ipA, ipB := netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("10.244.2.1")
	peerOf := func(k wgtypes.Key, port int, ip netip.Addr) []wgtypes.PeerConfig {
		return []wgtypes.PeerConfig{{
			PublicKey: k.PublicKey(), ReplaceAllowedIPs: true,
			// bindtest routes by port: 1 reaches bind 1, 2 bind 0.
			Endpoint:   &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
			AllowedIPs: []net.IPNet{{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}},
		}}
	}
	sockB := filepath.Join(dir, "b.sock")
	b, tunB := peerDevice(t, keyB, binds[1], sockB, peerOf(keyA, 2, ipA))
	t.Cleanup(func() { b.Close() })
	// B's Open sends an initiation to A, which is not running yet. A real
	// socket drops it; the in-memory bind would keep it for A's Open, where
	// it crosses A's own initiation and, depending on timing, leaves B
	// sending on a session A has already replaced. Drop it as the network
	// would.
	if n := drainBind(t, binds[0], 2*time.Second); n == 0 {
		t.Fatal("B sent no handshake initiation at Open")
	}

	var last time.Time
	for run := 1; run <= 2; run++ {
		sockA := filepath.Join(dir, fmt.Sprintf("a%d.sock", run))
		start := time.Now()
		a, tunA := peerDevice(t, keyA, binds[0], sockA, peerOf(keyB, 1, ipB))
		if a.Reattached() {
			t.Error("Reattached on an in-memory TUN")
		}
		// Handshake with no data sent: A initiated it on its own.
		hsA := waitHandshakeAfter(t, sockA, time.Time{}, fmt.Sprintf("run %d: A", run))
		hsB := waitHandshakeAfter(t, sockB, last, fmt.Sprintf("run %d: B", run))
		t.Logf("run %d: handshake done %s after Open", run, hsA.Sub(start).Round(time.Millisecond))
		last = hsB

		// B → A only: must arrive on the new session.
		ping := tuntest.Ping(ipA, ipB)
		tunB.Outbound <- ping
		select {
		case got := <-tunA.Inbound:
			if string(got) != string(ping) {
				t.Fatalf("run %d: A received a different packet", run)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d: B's packet did not reach A", run)
		}
		a.Close()
	}
}
