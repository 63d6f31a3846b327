package mesh

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func ipnets(s ...string) []net.IPNet {
	var out []net.IPNet
	for _, x := range s {
		_, n, err := net.ParseCIDR(x)
		if err != nil {
			panic(err)
		}
		out = append(out, *n)
	}
	return out
}

func udp(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func dur(d time.Duration) *time.Duration { return &d }

func devPeer(k wgtypes.Key, ep string, ka time.Duration, cidrs ...string) wgtypes.Peer {
	p := wgtypes.Peer{PublicKey: k, PersistentKeepaliveInterval: ka, AllowedIPs: ipnets(cidrs...)}
	if ep != "" {
		p.Endpoint = udp(ep)
	}
	return p
}

// cmpCfg compares configs, treating net.IP/net.UDPAddr by their text.
var cmpCfg = cmp.Options{
	cmp.Comparer(func(a, b net.IPNet) bool { return a.String() == b.String() }),
	cmp.Comparer(func(a, b *net.UDPAddr) bool {
		if a == nil || b == nil {
			return a == b
		}
		return a.AddrPort() == b.AddrPort()
	}),
}

func TestDiff(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	p1 := Peer{Node: "n1", PublicKey: k1, Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24"), Keepalive: 25 * time.Second}
	p2 := Peer{Node: "n2", PublicKey: k2, Endpoint: ap("198.51.100.12:51820"), AllowedIPs: pfx("10.244.2.0/24", "fd00:2::/64"), Keepalive: 0}
	converged := []wgtypes.Peer{
		devPeer(k1, "198.51.100.11:51820", 25*time.Second, "10.244.1.0/24"),
		devPeer(k2, "198.51.100.12:51820", 0, "fd00:2::/64", "10.244.2.0/24"), // other order
	}
	with := func(p Peer, f func(*Peer)) Peer { f(&p); return p }

	tests := []struct {
		name    string
		desired []Peer
		device  []wgtypes.Peer
		opts    DiffOptions
		want    []wgtypes.PeerConfig
	}{
		{
			name:    "add new peers",
			desired: []Peer{p1, with(p2, func(p *Peer) { p.Endpoint = netip.AddrPort{} })},
			want: []wgtypes.PeerConfig{
				{PublicKey: k1, Endpoint: udp("198.51.100.11:51820"), PersistentKeepaliveInterval: dur(25 * time.Second), ReplaceAllowedIPs: true, AllowedIPs: ipnets("10.244.1.0/24")},
				{PublicKey: k2, PersistentKeepaliveInterval: dur(0), ReplaceAllowedIPs: true, AllowedIPs: ipnets("10.244.2.0/24", "fd00:2::/64")},
			},
		},
		{
			name:    "converged device: nothing, allowed IP order ignored",
			desired: []Peer{p1, p2},
			device:  converged,
			opts:    DiffOptions{GC: true},
		},
		{
			name:    "allowed IPs in 16-byte IPv4 form are equal",
			desired: []Peer{p1},
			device: []wgtypes.Peer{{PublicKey: k1, Endpoint: udp("198.51.100.11:51820"), PersistentKeepaliveInterval: 25 * time.Second,
				AllowedIPs: []net.IPNet{{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(24, 32)}}}},
		},
		{
			name:    "published endpoint changed: update only that",
			desired: []Peer{with(p1, func(p *Peer) { p.Endpoint = ap("198.51.100.99:51820") }), p2},
			device:  converged,
			opts:    DiffOptions{LastApplied: map[wgtypes.Key]netip.AddrPort{k1: ap("198.51.100.11:51820")}},
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, Endpoint: udp("198.51.100.99:51820")}},
		},
		{
			name:    "roamed endpoint preserved",
			desired: []Peer{p1},
			device:  []wgtypes.Peer{devPeer(k1, "203.0.113.7:40000", 25*time.Second, "10.244.1.0/24")},
			opts:    DiffOptions{LastApplied: map[wgtypes.Key]netip.AddrPort{k1: ap("198.51.100.11:51820")}},
		},
		{
			name:    "published change overrides a roam",
			desired: []Peer{with(p1, func(p *Peer) { p.Endpoint = ap("198.51.100.50:51820") })},
			device:  []wgtypes.Peer{devPeer(k1, "203.0.113.7:40000", 25*time.Second, "10.244.1.0/24")},
			opts:    DiffOptions{LastApplied: map[wgtypes.Key]netip.AddrPort{k1: ap("198.51.100.11:51820")}},
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, Endpoint: udp("198.51.100.50:51820")}},
		},
		{
			name:    "unknown history: published endpoint is written",
			desired: []Peer{p1},
			device:  []wgtypes.Peer{devPeer(k1, "203.0.113.7:40000", 25*time.Second, "10.244.1.0/24")},
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, Endpoint: udp("198.51.100.11:51820")}},
		},
		{
			name:    "device has no endpoint yet",
			desired: []Peer{p1},
			device:  []wgtypes.Peer{devPeer(k1, "", 25*time.Second, "10.244.1.0/24")},
			opts:    DiffOptions{LastApplied: map[wgtypes.Key]netip.AddrPort{k1: ap("198.51.100.11:51820")}},
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, Endpoint: udp("198.51.100.11:51820")}},
		},
		{
			name:    "unresolved endpoint leaves the device's alone",
			desired: []Peer{with(p1, func(p *Peer) { p.Endpoint = netip.AddrPort{} })},
			device:  []wgtypes.Peer{devPeer(k1, "198.51.100.11:51820", 25*time.Second, "10.244.1.0/24")},
		},
		{
			name:    "keepalive change only",
			desired: []Peer{with(p1, func(p *Peer) { p.Keepalive = 10 * time.Second })},
			device:  converged[:1],
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, PersistentKeepaliveInterval: dur(10 * time.Second)}},
		},
		{
			name:    "allowed IPs changed: replaced as a set",
			desired: []Peer{with(p1, func(p *Peer) { p.AllowedIPs = pfx("10.244.1.0/24", "10.245.1.0/24") })},
			device:  converged[:1],
			want:    []wgtypes.PeerConfig{{PublicKey: k1, UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: ipnets("10.244.1.0/24", "10.245.1.0/24")}},
		},
		{
			name:    "undesired peer kept before sync",
			desired: []Peer{p1},
			device:  append(converged[:1:1], devPeer(k3, "198.51.100.13:51820", 0, "10.244.3.0/24")),
		},
		{
			name:    "undesired peers removed after sync, sorted by key",
			desired: []Peer{p1},
			device:  append([]wgtypes.Peer{devPeer(k3, "198.51.100.13:51820", 0, "10.244.3.0/24")}, converged...),
			opts:    DiffOptions{GC: true},
			want:    []wgtypes.PeerConfig{{PublicKey: k2, Remove: true}, {PublicKey: k3, Remove: true}},
		},
		{
			name:    "mixed: add one, update one, remove one",
			desired: []Peer{with(p1, func(p *Peer) { p.Keepalive = 0 }), {Node: "n3", PublicKey: k3, Endpoint: ap("198.51.100.13:51820"), AllowedIPs: pfx("10.244.3.0/24")}},
			device:  converged,
			opts:    DiffOptions{GC: true},
			want: []wgtypes.PeerConfig{
				{PublicKey: k1, UpdateOnly: true, PersistentKeepaliveInterval: dur(0)},
				{PublicKey: k3, Endpoint: udp("198.51.100.13:51820"), PersistentKeepaliveInterval: dur(0), ReplaceAllowedIPs: true, AllowedIPs: ipnets("10.244.3.0/24")},
				{PublicKey: k2, Remove: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &wgtypes.Device{Name: "wgmesh0", Peers: tt.device}
			got := Diff(Desired{Peers: tt.desired}, dev, tt.opts)
			if got.ReplacePeers {
				t.Fatal("Diff set ReplacePeers")
			}
			if diff := cmp.Diff(tt.want, got.Peers, cmpCfg); diff != "" {
				t.Errorf("Diff peers (-want +got):\n%s", diff)
			}
			if IsEmpty(got) != (len(tt.want) == 0) {
				t.Errorf("IsEmpty = %v with %d peer changes", IsEmpty(got), len(got.Peers))
			}
		})
	}
}

func TestDiffNilDevice(t *testing.T) {
	got := Diff(Desired{Peers: []Peer{{PublicKey: testKey(1), AllowedIPs: pfx("10.244.1.0/24")}}}, nil, DiffOptions{GC: true})
	if len(got.Peers) != 1 || got.Peers[0].UpdateOnly || got.Peers[0].Remove {
		t.Fatalf("Diff with nil device = %+v, want one added peer", got.Peers)
	}
}

func TestIsEmpty(t *testing.T) {
	port := 1
	for _, c := range []wgtypes.Config{{ListenPort: &port}, {ReplacePeers: true}, {Peers: []wgtypes.PeerConfig{{}}}} {
		if IsEmpty(c) {
			t.Errorf("IsEmpty(%+v) = true", c)
		}
	}
	if !IsEmpty(wgtypes.Config{}) {
		t.Error("IsEmpty(zero config) = false")
	}
}
