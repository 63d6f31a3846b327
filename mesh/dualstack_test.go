package mesh

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestComputeDualStack: nodes with an IPv4 and an IPv6 podCIDR (as
// kube-controller-manager allocates them with a dual-stack --cluster-cidr)
// get one peer each whose allowed IPs carry both prefixes, both are routed,
// and the endpoint's family is independent of the pods' (IPv6-only,
// IPv4-only and mixed underlays in one cluster).
func TestComputeDualStack(t *testing.T) {
	self := Self{Name: "self", PublicKey: testKey(200), PodCIDRs: pfx("10.244.0.0/24", "fd00:10:244::/64")}
	dual := func(name string, i byte, endpoint string) RawNode {
		return with(goodRaw(name, i), func(r *RawNode) {
			r.PodCIDRs = []string{fmtV4(i), fmtV6(i)}
			r.Annotations[AnnotationEndpoint] = endpoint
		})
	}
	tests := []struct {
		name  string
		nodes []RawNode
		want  Desired
	}{
		{
			name:  "dual-stack pods over an IPv4 underlay",
			nodes: []RawNode{dual("n1", 1, "198.51.100.11:51820")},
			want: Desired{
				Peers:  []Peer{{Node: "n1", PublicKey: testKey(1), Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24", "fd00:10:244:1::/64"), Keepalive: 25 * time.Second}},
				Routes: pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
			},
		},
		{
			name:  "IPv6-only endpoint",
			nodes: []RawNode{dual("n2", 2, "[2001:db8:100::12]:51820")},
			want: Desired{
				Peers:  []Peer{{Node: "n2", PublicKey: testKey(2), Endpoint: ap("[2001:db8:100::12]:51820"), AllowedIPs: pfx("10.244.2.0/24", "fd00:10:244:2::/64"), Keepalive: 25 * time.Second}},
				Routes: pfx("10.244.2.0/24", "fd00:10:244:2::/64"),
			},
		},
		{
			name: "mixed cluster: one peer over IPv4, one over IPv6, one IPv4-mapped endpoint unmapped",
			nodes: []RawNode{
				dual("n3", 3, "[2001:db8:100::13]:51820"),
				dual("n1", 1, "198.51.100.11:51820"),
				dual("n4", 4, "[::ffff:198.51.100.14]:51820"),
			},
			want: Desired{
				Peers: []Peer{
					{Node: "n1", PublicKey: testKey(1), Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24", "fd00:10:244:1::/64"), Keepalive: 25 * time.Second},
					{Node: "n3", PublicKey: testKey(3), Endpoint: ap("[2001:db8:100::13]:51820"), AllowedIPs: pfx("10.244.3.0/24", "fd00:10:244:3::/64"), Keepalive: 25 * time.Second},
					{Node: "n4", PublicKey: testKey(4), Endpoint: ap("198.51.100.14:51820"), AllowedIPs: pfx("10.244.4.0/24", "fd00:10:244:4::/64"), Keepalive: 25 * time.Second},
				},
				Routes: pfx("10.244.1.0/24", "10.244.3.0/24", "10.244.4.0/24", "fd00:10:244:1::/64", "fd00:10:244:3::/64", "fd00:10:244:4::/64"),
			},
		},
		{
			name: "an IPv6 prefix overlapping ours excludes only that node",
			nodes: []RawNode{
				dual("n1", 1, "198.51.100.11:51820"),
				with(goodRaw("bad", 9), func(r *RawNode) { r.PodCIDRs = []string{"10.244.9.0/24", "fd00:10:244::/56"} }),
			},
			want: Desired{
				Peers:    []Peer{{Node: "n1", PublicKey: testKey(1), Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24", "fd00:10:244:1::/64"), Keepalive: 25 * time.Second}},
				Routes:   pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
				Excluded: []Exclusion{{Node: "bad", Reason: ReasonOverlapsSelfCIDR}},
			},
		},
		{
			name: "IPv6 prefixes of two peers overlapping: the older keeps its place",
			nodes: []RawNode{
				created(dual("n1", 1, "198.51.100.11:51820"), 1),
				created(with(goodRaw("late", 8), func(r *RawNode) { r.PodCIDRs = []string{"10.244.8.0/24", "fd00:10:244:1::/64"} }), 2),
			},
			want: Desired{
				Peers:    []Peer{{Node: "n1", PublicKey: testKey(1), Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24", "fd00:10:244:1::/64"), Keepalive: 25 * time.Second}},
				Routes:   pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
				Excluded: []Exclusion{{Node: "late", Reason: ReasonOverlappingCIDR}},
			},
		},
	}
	ignoreErr := cmp.Comparer(func(a, b error) bool { return (a == nil) == (b == nil) })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compute(Input{Self: self, Nodes: tt.nodes, DefaultKeepalive: 25 * time.Second})
			for i := range tt.want.Excluded {
				tt.want.Excluded[i].Err = errPresent
			}
			if diff := cmp.Diff(tt.want, got, cmpNet, ignoreErr); diff != "" {
				t.Errorf("Compute (-want +got):\n%s", diff)
			}
		})
	}
}

var errPresent = &NodeError{Reason: "present"}

func fmtV4(i byte) string { return fmt.Sprintf("10.244.%d.0/24", i) }
func fmtV6(i byte) string { return fmt.Sprintf("fd00:10:244:%x::/64", i) }
