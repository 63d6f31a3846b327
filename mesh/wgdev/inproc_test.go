package wgdev

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func cidr(t *testing.T, s string) net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return *n
}

func dur(d time.Duration) *time.Duration { return &d }

// TestLocalRoundTrip configures a running device in-process and reads it
// back in-process: adds, an update-only change, a removal, an update-only
// change of an unknown peer (ignored), IPv4 and IPv6 endpoints and allowed
// IPs, and the private key and listen port.
func TestLocalRoundTrip(t *testing.T) {
	n := newTestPair(t)[0]
	l := n.dev.Local()
	k1, k2, k3, k4 := mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey(), mustKey(t).PublicKey()
	priv, port := mustKey(t), 51999 // the in-memory bind keeps its own port
	steps := []wgtypes.Config{
		{PrivateKey: &priv, ListenPort: &port, Peers: []wgtypes.PeerConfig{
			{PublicKey: k1, Endpoint: &net.UDPAddr{IP: net.ParseIP("198.51.100.11"), Port: 51820}, PersistentKeepaliveInterval: dur(25 * time.Second),
				ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{cidr(t, "10.244.1.0/24"), cidr(t, "fd00:10:244:1::/64")}},
			{PublicKey: k2, Endpoint: &net.UDPAddr{IP: net.ParseIP("2001:db8:100::12"), Port: 51821},
				ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{cidr(t, "10.244.2.0/24")}},
			{PublicKey: k3, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{cidr(t, "10.244.3.0/24")}},
		}},
		{Peers: []wgtypes.PeerConfig{
			{PublicKey: k1, UpdateOnly: true, Endpoint: &net.UDPAddr{IP: net.ParseIP("198.51.100.21"), Port: 51822}, PersistentKeepaliveInterval: dur(0)},
			{PublicKey: k2, UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{cidr(t, "10.244.22.0/24")}},
			{PublicKey: k3, Remove: true},
			{PublicKey: k4, UpdateOnly: true, Endpoint: &net.UDPAddr{IP: net.ParseIP("198.51.100.44"), Port: 1}},
		}},
	}
	for i, c := range steps {
		if err := l.ConfigureDevice(c); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	got, err := l.Device()
	if err != nil {
		t.Fatal(err)
	}
	type peer struct {
		Key       wgtypes.Key
		Endpoint  string
		Keepalive time.Duration
		IPs       []string
	}
	var peers []peer
	for _, p := range got.Peers {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		slices.Sort(ips)
		ep := ""
		if p.Endpoint != nil {
			// The in-memory bind maps every address to loopback;
			// the port survives.
			ep = strconv.Itoa(p.Endpoint.Port)
		}
		peers = append(peers, peer{p.PublicKey, ep, p.PersistentKeepaliveInterval, ips})
	}
	slices.SortFunc(peers, func(a, b peer) int { return bytes.Compare(a.Key[:], b.Key[:]) })
	want := []peer{
		{k1, "51822", 0, []string{"10.244.1.0/24", "fd00:10:244:1::/64"}},
		{k2, "51821", 0, []string{"10.244.22.0/24"}},
	}
	slices.SortFunc(want, func(a, b peer) int { return bytes.Compare(a.Key[:], b.Key[:]) })
	if diff := cmp.Diff(want, peers); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
	if got.PrivateKey != priv || got.PublicKey != priv.PublicKey() || got.Name != n.dev.Name() || got.Type != wgtypes.Userspace {
		t.Errorf("device = key %v/%v name %q type %v", got.PrivateKey == priv, got.PublicKey == priv.PublicKey(), got.Name, got.Type)
	}

	// The same text over the socket, parsed, is what the in-process read
	// gave (endpoints, counters and all).
	lines := uapiDo(t, n.sock, "get=1\n\n")
	viaSocket, err := parseGet([]byte(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	viaSocket.Name = got.Name
	for _, d := range []*wgtypes.Device{viaSocket, got} { // wireguard-go lists peers in map order
		slices.SortFunc(d.Peers, func(a, b wgtypes.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	}
	if diff := cmp.Diff(viaSocket, got); diff != "" {
		t.Errorf("socket (-) vs in-process (+):\n%s", diff)
	}
	if err := l.ConfigureDevice(wgtypes.Config{ReplacePeers: true}); !errors.Is(err, ErrReplacePeers) {
		t.Errorf("ReplacePeers: err %v, want ErrReplacePeers", err)
	}
	n.dev.Close()
	if _, err := l.Device(); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err %v, want ErrClosed", err)
	}
}

func TestParseGetRejectsGarbage(t *testing.T) {
	for _, in := range []string{
		"listen_port=x\n",
		"endpoint=1.2.3.4:5\n", // before any peer
		"public_key=abcd\n",
		"no equals sign\n",
		"private_key=" + string(bytes.Repeat([]byte("zz"), 32)) + "\n",
		"public_key=" + string(bytes.Repeat([]byte("00"), 32)) + "\nallowed_ip=10.0.0.0/33\n",
		"errno=1\n",
	} {
		if _, err := parseGet([]byte(in)); err == nil {
			t.Errorf("parseGet(%q) succeeded", in)
		}
	}
}

// BenchmarkLocalDevice5000 reads a device of 5000 peers in-process: the
// text wireguard-go writes ("ipc-get") and that plus our parse ("read").
func BenchmarkLocalDevice5000(b *testing.B) {
	n := newTestPair(&testing.T{})[0]
	defer n.dev.Close()
	l := n.dev.Local()
	var cfg wgtypes.Config
	for i := range 5000 {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k.PublicKey(),
			Endpoint:          &net.UDPAddr{IP: net.IPv4(198, 51, 100, byte(10+i%240)), Port: 20000 + i},
			ReplaceAllowedIPs: true,
			AllowedIPs:        []net.IPNet{{IP: net.IPv4(10, 244, byte(i*8>>8), byte(i*8)).To4(), Mask: net.CIDRMask(29, 32)}}})
	}
	if err := l.ConfigureDevice(cfg); err != nil {
		b.Fatal(err)
	}
	b.Run("ipc-get", func(b *testing.B) {
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			if err := n.dev.dev.IpcGetOperation(&buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read", func(b *testing.B) {
		for b.Loop() {
			d, err := l.Device()
			if err != nil || len(d.Peers) != 5000 {
				b.Fatal(len(d.Peers), err)
			}
		}
	})
}
