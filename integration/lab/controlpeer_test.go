package lab

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSetconfOf(t *testing.T) {
	tests := []struct {
		name, conf, want string
	}{
		{
			name: "address dropped, key filled in, peers kept",
			conf: "# wgmesh external peer \"lab-control-plane\"\n[Interface]\nPrivateKey = <private key>\nAddress = 203.0.113.1/32\n\n[Peer]\n# node node1\nPublicKey = AAAA\nEndpoint = 198.51.100.11:51820\nAllowedIPs = 10.244.1.0/24\n",
			want: "# wgmesh external peer \"lab-control-plane\"\n[Interface]\nPrivateKey = SECRET\n\n[Peer]\n# node node1\nPublicKey = AAAA\nEndpoint = 198.51.100.11:51820\nAllowedIPs = 10.244.1.0/24\n",
		},
		{
			name: "no address line",
			conf: "[Interface]\nPrivateKey = <private key>\n# Address: an address of yours within 192.168.10.0/24\n",
			want: "[Interface]\nPrivateKey = SECRET\n# Address: an address of yours within 192.168.10.0/24\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, setconfOf(tt.conf, "SECRET")); diff != "" {
				t.Errorf("setconfOf (-want +got):\n%s", diff)
			}
		})
	}
}

// The interface name must fit IFNAMSIZ (15 characters) and differ between
// labs, whose wireguard-go sockets share /var/run/wireguard.
func TestControlPlaneIfname(t *testing.T) {
	a, b := controlPlaneIfname("k1a2b3c4"), controlPlaneIfname("k1a2b3c5")
	if len(a) > 15 || len(b) > 15 {
		t.Errorf("interface names %q, %q: longer than 15", a, b)
	}
	if a == b {
		t.Errorf("two labs share the interface name %q", a)
	}
}
