package show

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

func pcKey(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[31] = i, 0x42
	return k
}

func pcNode(i byte, minute int) mesh.RawNode {
	return mesh.RawNode{
		Name: fmt.Sprintf("node%d", i),
		Annotations: map[string]string{
			mesh.AnnotationPublicKey: pcKey(i).String(),
			mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:51820", 10+int(i)),
		},
		PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)},
		Created:  time.Date(2025, 1, 1, 0, minute, 0, 0, time.UTC),
	}
}

func TestPeerConfig(t *testing.T) {
	ka := int64(25)
	laptop := mesh.RawExternalPeer{Name: "laptop", PublicKey: pcKey(50).String(), AllowedIPs: []string{"203.0.113.250/32"}, Keepalive: &ka}
	site := mesh.RawExternalPeer{Name: "site", PublicKey: pcKey(51).String(), AllowedIPs: []string{"192.168.10.0/24"}}
	thief := mesh.RawExternalPeer{Name: "thief", PublicKey: pcKey(52).String(), AllowedIPs: []string{"10.244.2.0/24"}}
	override := pcNode(3, 1)
	override.Annotations[mesh.AnnotationEndpointOverride] = "192.0.2.3:4000"
	nodes := []mesh.RawNode{pcNode(2, 5), pcNode(1, 9), override,
		{Name: "nokey", PodCIDRs: []string{"10.244.9.0/24"}}} // not in the mesh
	all := []mesh.RawExternalPeer{laptop, site, thief}
	svc := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}

	var b strings.Builder
	if err := PeerConfig(&b, PeerConfigInput{Peer: laptop, Nodes: nodes, Peers: all, ServiceCIDRs: svc}); err != nil {
		t.Fatal(err)
	}
	want := `# wgmesh external peer "laptop" (wgmeshctl peer-config).
# Use with wg-quick, or strip Address for wg setconf and add the address and routes yourself.
[Interface]
# The private key whose public key is the Peer's spec.publicKey (` + pcKey(50).String() + `).
PrivateKey = <private key>
Address = 203.0.113.250/32

[Peer]
# node node1
PublicKey = ` + pcKey(1).String() + `
Endpoint = 198.51.100.11:51820
AllowedIPs = 10.244.1.0/24
PersistentKeepalive = 25

[Peer]
# node node2
PublicKey = ` + pcKey(2).String() + `
Endpoint = 198.51.100.12:51820
AllowedIPs = 10.244.2.0/24
PersistentKeepalive = 25

[Peer]
# node node3, the gateway for the Service range
PublicKey = ` + pcKey(3).String() + `
Endpoint = 192.0.2.3:4000
AllowedIPs = 10.244.3.0/24, 10.96.0.0/16
PersistentKeepalive = 25
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}

	// A chosen gateway; a Peer without host addresses gets a hint.
	b.Reset()
	if err := PeerConfig(&b, PeerConfigInput{Peer: site, Nodes: nodes, Peers: all, ServiceCIDRs: svc, Gateway: "node1"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"# Address: an address of yours within 192.168.10.0/24", "# node node1, the gateway", "AllowedIPs = 10.244.1.0/24, 10.96.0.0/16"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("config lacks %q:\n%s", s, b.String())
		}
	}
	if strings.Contains(b.String(), "PersistentKeepalive") {
		t.Errorf("keepalive without one on the Peer:\n%s", b.String())
	}

	for _, tc := range []struct {
		name string
		in   PeerConfigInput
		want string
	}{
		{"refused peer", PeerConfigInput{Peer: thief, Nodes: nodes, Peers: all}, "overlaps-pod-cidr"},
		{"unknown gateway", PeerConfigInput{Peer: laptop, Nodes: nodes, Peers: all, ServiceCIDRs: svc, Gateway: "nokey"}, "not a node of the mesh"},
		{"no nodes", PeerConfigInput{Peer: laptop, Peers: all}, "no node"},
		{"not listed", PeerConfigInput{Peer: laptop, Nodes: nodes}, "not among"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := PeerConfig(&strings.Builder{}, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
