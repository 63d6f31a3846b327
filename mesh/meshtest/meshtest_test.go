package meshtest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

func key(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[31] = i, 1
	return k
}

func cidrs(s ...string) []net.IPNet {
	var out []net.IPNet
	for _, x := range s {
		_, n, _ := net.ParseCIDR(x)
		out = append(out, *n)
	}
	return out
}

func udp(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func d(x time.Duration) *time.Duration { return &x }

// view renders the device for comparison: key -> "endpoint ka allowed...".
func view(t *testing.T, dev *Device) map[byte][]string {
	t.Helper()
	got, err := dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	m := map[byte][]string{}
	for _, p := range got.Peers {
		v := []string{"ep=" + p.Endpoint.String(), "ka=" + p.PersistentKeepaliveInterval.String()}
		for _, a := range p.AllowedIPs {
			v = append(v, a.String())
		}
		m[p.PublicKey[0]] = v
	}
	return m
}

func TestDeviceSemantics(t *testing.T) {
	dev := NewDevice("wg0")
	steps := []struct {
		name string
		cfg  wgtypes.Config
		want map[byte][]string
	}{
		{"add", wgtypes.Config{Peers: []wgtypes.PeerConfig{
			{PublicKey: key(1), Endpoint: udp("198.51.100.1:1"), PersistentKeepaliveInterval: d(time.Second), AllowedIPs: cidrs("10.244.1.0/24")},
			{PublicKey: key(2), AllowedIPs: cidrs("10.244.2.0/24")},
		}}, map[byte][]string{1: {"ep=198.51.100.1:1", "ka=1s", "10.244.1.0/24"}, 2: {"ep=<nil>", "ka=0s", "10.244.2.0/24"}}},
		{"update-only on unknown peer is ignored", wgtypes.Config{Peers: []wgtypes.PeerConfig{
			{PublicKey: key(3), UpdateOnly: true, AllowedIPs: cidrs("10.244.3.0/24")},
		}}, map[byte][]string{1: {"ep=198.51.100.1:1", "ka=1s", "10.244.1.0/24"}, 2: {"ep=<nil>", "ka=0s", "10.244.2.0/24"}}},
		{"nil fields untouched, allowed IPs appended", wgtypes.Config{Peers: []wgtypes.PeerConfig{
			{PublicKey: key(1), UpdateOnly: true, AllowedIPs: cidrs("10.245.1.0/24")},
		}}, map[byte][]string{1: {"ep=198.51.100.1:1", "ka=1s", "10.244.1.0/24", "10.245.1.0/24"}, 2: {"ep=<nil>", "ka=0s", "10.244.2.0/24"}}},
		{"replace allowed IPs", wgtypes.Config{Peers: []wgtypes.PeerConfig{
			{PublicKey: key(1), UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: cidrs("10.244.9.0/24")},
		}}, map[byte][]string{1: {"ep=198.51.100.1:1", "ka=1s", "10.244.9.0/24"}, 2: {"ep=<nil>", "ka=0s", "10.244.2.0/24"}}},
		{"an allowed IP moves between peers", wgtypes.Config{Peers: []wgtypes.PeerConfig{
			{PublicKey: key(2), AllowedIPs: cidrs("10.244.9.0/24")},
		}}, map[byte][]string{1: {"ep=198.51.100.1:1", "ka=1s"}, 2: {"ep=<nil>", "ka=0s", "10.244.2.0/24", "10.244.9.0/24"}}},
		{"remove", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key(1), Remove: true}, {PublicKey: key(7), Remove: true}}},
			map[byte][]string{2: {"ep=<nil>", "ka=0s", "10.244.2.0/24", "10.244.9.0/24"}}},
		{"replace peers", wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{{PublicKey: key(5), Endpoint: udp("[2001:db8::5]:5")}}},
			map[byte][]string{5: {"ep=[2001:db8::5]:5", "ka=0s"}}},
	}
	for i, s := range steps {
		if err := dev.ConfigureDevice(s.cfg); err != nil {
			t.Fatalf("step %q: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, view(t, dev)); diff != "" {
			t.Errorf("step %q (-want +got):\n%s", s.name, diff)
		}
		if n := len(dev.Configs()); n != i+1 {
			t.Errorf("step %q: %d configs recorded, want %d", s.name, n, i+1)
		}
	}

	// Private key and port are applied.
	priv, _ := wgtypes.GeneratePrivateKey()
	port := 51820
	if err := dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv, ListenPort: &port}); err != nil {
		t.Fatal(err)
	}
	got, _ := dev.Device()
	if got.PublicKey != priv.PublicKey() || got.ListenPort != port {
		t.Errorf("device key/port = %s/%d", got.PublicKey, got.ListenPort)
	}

	// The snapshot is a deep copy.
	got.Peers[0].AllowedIPs = append(got.Peers[0].AllowedIPs, cidrs("10.0.0.0/8")...)
	got.Peers[0].Endpoint.Port = 9
	if diff := cmp.Diff(map[byte][]string{5: {"ep=[2001:db8::5]:5", "ka=0s"}}, view(t, dev)); diff != "" {
		t.Errorf("mutating a snapshot changed the device:\n%s", diff)
	}

	if err := dev.Roam(key(5), udp("203.0.113.5:6000")); err != nil {
		t.Fatal(err)
	}
	if err := dev.Roam(key(6), udp("203.0.113.5:6000")); err == nil {
		t.Error("Roam of unknown peer succeeded")
	}
	n := len(dev.Configs())
	if v := view(t, dev)[5][0]; v != "ep=203.0.113.5:6000" {
		t.Errorf("after roam endpoint %s", v)
	}
	if len(dev.Configs()) != n {
		t.Error("Roam was recorded as a config")
	}

	boom := errors.New("boom")
	dev.ConfigureErr = boom
	if err := dev.ConfigureDevice(wgtypes.Config{ReplacePeers: true}); !errors.Is(err, boom) {
		t.Errorf("ConfigureErr not returned: %v", err)
	}
	if len(view(t, dev)) != 1 || len(dev.Configs()) != n {
		t.Error("failed ConfigureDevice changed state or was recorded")
	}
	dev.DeviceErr = boom
	if _, err := dev.Device(); !errors.Is(err, boom) {
		t.Errorf("DeviceErr not returned: %v", err)
	}
}

func TestDataplane(t *testing.T) {
	var dp Dataplane
	if _, ok := dp.Last(); ok {
		t.Fatal("Last on empty dataplane reported a state")
	}
	s := mesh.DataplaneState{LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}, MTU: 1420}
	if err := dp.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	s.LocalPodCIDRs[0] = netip.MustParsePrefix("10.9.0.0/24") // caller reuses its slice
	dp.Err = errors.New("nope")
	if err := dp.Apply(context.Background(), mesh.DataplaneState{MTU: 1}); err == nil {
		t.Fatal("Err not returned")
	}
	st := dp.States()
	if len(st) != 2 || st[0].LocalPodCIDRs[0].String() != "10.244.0.0/24" || st[1].MTU != 1 {
		t.Errorf("states = %+v", st)
	}
}

func TestSource(t *testing.T) {
	s := NewSource("self", mesh.RawNode{Name: "self"}, mesh.RawNode{Name: "b"})
	select {
	case <-s.Changed():
		t.Fatal("signal before any change")
	default:
	}
	s.Upsert(mesh.RawNode{Name: "a"})
	s.Delete("b")
	<-s.Changed() // two changes coalesce into one signal
	select {
	case <-s.Changed():
		t.Fatal("bursts did not coalesce")
	default:
	}
	nodes, _ := s.Nodes()
	if len(nodes) != 2 || nodes[0].Name != "a" || nodes[1].Name != "self" {
		t.Errorf("nodes = %+v", nodes)
	}

	if err := s.Publish(context.Background(), map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	nodes, _ = s.Nodes()
	if nodes[1].Annotations["k"] != "v" || len(s.Published()) != 1 {
		t.Errorf("publish not merged: %+v", nodes[1])
	}
	s.Delete("self")
	if err := s.Publish(context.Background(), map[string]string{"k": "v"}); !errors.Is(err, ErrNoSuchNode) {
		t.Errorf("publish to missing self: %v", err)
	}
	s.Warn("a", "bad-public-key", "x")
	if diff := cmp.Diff([]Warning{{"a", "bad-public-key", "x"}}, s.Warnings()); diff != "" {
		t.Error(diff)
	}
	s.SetSynced(false)
	if s.HasSynced() {
		t.Error("SetSynced(false) ignored")
	}
}
