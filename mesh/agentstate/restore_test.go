package agentstate

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestRestore(t *testing.T) {
	k1, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), FileName)
	s := State{Version: Version, Node: "node-a", Interface: "wgmesh0", Peers: []Peer{
		{Node: "node-b", PublicKey: k1.PublicKey().String(), Endpoint: "198.51.100.12:51820",
			AllowedIPs: []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, PersistentKeepaliveSeconds: 25},
		{Node: "node-c", PublicKey: k2.PublicKey().String(), AllowedIPs: []string{"10.244.3.0/24"}},
	}}
	if err := Write(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := Restore(path, "node-a", "wgmesh0")
	if err != nil {
		t.Fatal(err)
	}
	ka := 25 * time.Second
	want := []wgtypes.PeerConfig{
		{
			PublicKey: k1.PublicKey(), ReplaceAllowedIPs: true, PersistentKeepaliveInterval: &ka,
			Endpoint: &net.UDPAddr{IP: net.IPv4(198, 51, 100, 12).To4(), Port: 51820},
			AllowedIPs: []net.IPNet{
				{IP: net.IP{10, 244, 2, 0}, Mask: net.CIDRMask(24, 32)},
				{IP: net.ParseIP("fd00:10:244:2::"), Mask: net.CIDRMask(64, 128)},
			},
		},
		{PublicKey: k2.PublicKey(), ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{{IP: net.IP{10, 244, 3, 0}, Mask: net.CIDRMask(24, 32)}}},
	}
	if diff := cmp.Diff(want, got.Peers); diff != "" {
		t.Errorf("Restore peers (-want +got):\n%s", diff)
	}
	wantKeys := map[string]wgtypes.Key{"node-b": k1.PublicKey(), "node-c": k2.PublicKey()}
	if diff := cmp.Diff(wantKeys, got.KnownKeys); diff != "" {
		t.Errorf("Restore known keys (-want +got):\n%s", diff)
	}

	for _, tt := range []struct{ node, iface string }{{"node-b", "wgmesh0"}, {"node-a", "wg1"}} {
		if _, err := Restore(path, tt.node, tt.iface); !errors.Is(err, ErrOtherOwner) {
			t.Errorf("Restore(%s, %s) error = %v, want ErrOtherOwner", tt.node, tt.iface, err)
		}
	}
	if _, err := Restore(filepath.Join(t.TempDir(), "none.json"), "node-a", "wgmesh0"); !errors.Is(err, ErrNoState) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: error = %v, want ErrNoState", err)
	}
	if err := os.WriteFile(path, []byte(`{"version":1,"node":"node-a","peers":[{"node":"x","publicKey":"junk"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(path, "node-a", "wgmesh0"); !errors.Is(err, ErrBadState) {
		t.Errorf("bad peer: error = %v, want ErrBadState", err)
	}
}
