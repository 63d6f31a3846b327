package mesh

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var cmpNet = cmp.Options{
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// summary renders exclusions as "node:reason" for compact comparison.
func summary(e []Exclusion) []string {
	var out []string
	for _, x := range e {
		out = append(out, x.Node+":"+string(x.Reason))
	}
	return out
}

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func created(r RawNode, minutes int) RawNode {
	r.Created = t0.Add(time.Duration(minutes) * time.Minute)
	return r
}

func selfNode() Self {
	return Self{Name: "self", PublicKey: testKey(200), PodCIDRs: pfx("10.244.0.0/24")}
}

func TestComputeBasic(t *testing.T) {
	n3 := goodRaw("n3", 3)
	n1 := with(goodRaw("n1", 1), func(r *RawNode) { r.Annotations[AnnotationKeepalive] = "5s" })
	n2 := with(goodRaw("n2", 2), func(r *RawNode) { r.PodCIDRs = []string{"fd00::/64", "10.244.2.0/24"} })
	selfRaw := RawNode{Name: "self"} // no annotations: must not matter
	got := Compute(Input{Self: selfNode(), Nodes: []RawNode{n3, selfRaw, n1, n2}, DefaultKeepalive: 25 * time.Second})

	want := Desired{
		Peers: []Peer{
			{Node: "n1", PublicKey: testKey(1), Endpoint: ap("198.51.100.11:51820"), AllowedIPs: pfx("10.244.1.0/24"), Keepalive: 5 * time.Second},
			{Node: "n2", PublicKey: testKey(2), Endpoint: ap("198.51.100.12:51820"), AllowedIPs: pfx("10.244.2.0/24", "fd00::/64"), Keepalive: 25 * time.Second},
			{Node: "n3", PublicKey: testKey(3), Endpoint: ap("198.51.100.13:51820"), AllowedIPs: pfx("10.244.3.0/24"), Keepalive: 25 * time.Second},
		},
		Routes: pfx("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "fd00::/64"),
	}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("Compute mismatch (-want +got):\n%s", diff)
	}

	// Any input order gives the same result.
	rev := []RawNode{n2, n1, selfRaw, n3}
	if diff := cmp.Diff(got, Compute(Input{Self: selfNode(), Nodes: rev, DefaultKeepalive: 25 * time.Second}), cmpNet); diff != "" {
		t.Errorf("Compute depends on input order:\n%s", diff)
	}
}

func TestComputeExclusions(t *testing.T) {
	self := selfNode()
	tests := []struct {
		name       string
		nodes      []RawNode
		configured map[wgtypes.Key][]netip.Prefix
		wantPeers  []string
		wantExcl   []string
		msg        map[string]string // node -> substring of its exclusion error
	}{
		{
			name:      "malformed nodes do not disturb good ones",
			nodes:     []RawNode{goodRaw("good", 1), with(goodRaw("badkey", 2), func(r *RawNode) { r.Annotations[AnnotationPublicKey] = "x" }), with(goodRaw("nocidr", 3), func(r *RawNode) { r.PodCIDRs = nil }), with(goodRaw("badka", 4), func(r *RawNode) { r.Annotations[AnnotationKeepalive] = "1.5s" })},
			wantPeers: []string{"good"},
			wantExcl:  []string{"badka:bad-keepalive", "badkey:bad-public-key", "nocidr:no-pod-cidr"},
		},
		{
			name:      "duplicate key: older node wins",
			nodes:     []RawNode{created(goodRaw("a-young", 1), 10), created(with(goodRaw("z-old", 2), func(r *RawNode) { r.Annotations[AnnotationPublicKey] = testKey(1).String() }), 1), created(goodRaw("other", 3), 5)},
			wantPeers: []string{"other", "z-old"},
			wantExcl:  []string{"a-young:duplicate-public-key"},
			msg:       map[string]string{"a-young": `already used by node "z-old"`},
		},
		{
			name:       "duplicate key: incumbent wins over older newcomer",
			nodes:      []RawNode{created(goodRaw("a-young", 1), 10), created(with(goodRaw("z-old", 2), func(r *RawNode) { r.Annotations[AnnotationPublicKey] = testKey(1).String() }), 1)},
			configured: map[wgtypes.Key][]netip.Prefix{testKey(1): pfx("10.244.1.0/24")},
			wantPeers:  []string{"a-young"},
			wantExcl:   []string{"z-old:duplicate-public-key"},
			msg:        map[string]string{"z-old": `already used by node "a-young"`},
		},
		{
			name:      "duplicate key: same age, name breaks the tie",
			nodes:     []RawNode{goodRaw("b", 1), with(goodRaw("a", 2), func(r *RawNode) { r.Annotations[AnnotationPublicKey] = testKey(1).String() })},
			wantPeers: []string{"a"},
			wantExcl:  []string{"b:duplicate-public-key"},
		},
		{
			name:      "overlapping pod CIDR: older wins",
			nodes:     []RawNode{created(goodRaw("a-new", 1), 9), created(with(goodRaw("b-old", 2), func(r *RawNode) { r.PodCIDRs = []string{"10.244.1.128/25"} }), 2)},
			wantPeers: []string{"b-old"},
			wantExcl:  []string{"a-new:overlapping-pod-cidr"},
			msg:       map[string]string{"a-new": `10.244.1.0/24 overlaps 10.244.1.128/25 of node "b-old"`},
		},
		{
			name:       "overlapping pod CIDR: incumbent wins",
			nodes:      []RawNode{created(goodRaw("a-new", 1), 9), created(with(goodRaw("b-old", 2), func(r *RawNode) { r.PodCIDRs = []string{"10.244.1.128/25"} }), 2)},
			configured: map[wgtypes.Key][]netip.Prefix{testKey(1): pfx("10.244.1.0/24"), testKey(9): pfx("10.9.0.0/16")},
			wantPeers:  []string{"a-new"},
			wantExcl:   []string{"b-old:overlapping-pod-cidr"},
		},
		{
			name:       "stale incumbency (key moved to other CIDR) does not count",
			nodes:      []RawNode{created(goodRaw("a", 1), 9), created(with(goodRaw("b", 2), func(r *RawNode) { r.PodCIDRs = []string{"10.244.1.0/24"} }), 2)},
			configured: map[wgtypes.Key][]netip.Prefix{testKey(1): pfx("10.244.7.0/24")},
			wantPeers:  []string{"b"},
			wantExcl:   []string{"a:overlapping-pod-cidr"},
		},
		{
			name:      "same key as self",
			nodes:     []RawNode{goodRaw("ok", 1), with(goodRaw("twin", 2), func(r *RawNode) { r.Annotations[AnnotationPublicKey] = testKey(200).String() })},
			wantPeers: []string{"ok"},
			wantExcl:  []string{"twin:same-public-key-as-self"},
		},
		{
			name:  "overlaps local pod CIDR",
			nodes: []RawNode{goodRaw("ok", 1), with(goodRaw("squatter", 2), func(r *RawNode) { r.PodCIDRs = []string{"10.244.0.0/16"} })},
			// ok's 10.244.1.0/24 is inside the squatter's /16 too, but the
			// squatter is dropped first for covering our own CIDR, so ok stays.
			wantPeers: []string{"ok"},
			wantExcl:  []string{"squatter:overlaps-local-pod-cidr"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Compute(Input{Self: self, Nodes: tt.nodes, Configured: tt.configured})
			var peers []string
			for _, p := range d.Peers {
				peers = append(peers, p.Node)
			}
			if diff := cmp.Diff(tt.wantPeers, peers); diff != "" {
				t.Errorf("peers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantExcl, summary(d.Excluded)); diff != "" {
				t.Errorf("exclusions (-want +got):\n%s", diff)
			}
			for _, e := range d.Excluded {
				if e.Err == nil {
					t.Errorf("exclusion of %s has no error", e.Node)
				} else if want, ok := tt.msg[e.Node]; ok && !strings.Contains(e.Err.Error(), want) {
					t.Errorf("exclusion of %s: %q does not contain %q", e.Node, e.Err, want)
				}
			}
			// Routes never overlap each other nor the local CIDR.
			for i, r := range d.Routes {
				for _, q := range append(slices.Clone(d.Routes[i+1:]), self.PodCIDRs...) {
					if r.Overlaps(q) {
						t.Errorf("route %s overlaps %s", r, q)
					}
				}
			}
		})
	}
}

func TestComputeResolved(t *testing.T) {
	dns := with(goodRaw("dns", 1), func(r *RawNode) { r.Annotations[AnnotationEndpoint] = "wg1.example.org:51821" })
	lost := with(goodRaw("lost", 2), func(r *RawNode) { r.Annotations[AnnotationEndpoint] = "gone.example.org:51820" })
	d := Compute(Input{
		Self:     selfNode(),
		Nodes:    []RawNode{dns, lost},
		Resolved: map[string]netip.Addr{"wg1.example.org": netip.MustParseAddr("::ffff:198.51.100.77")},
	})
	want := []Peer{
		{Node: "dns", PublicKey: testKey(1), Endpoint: ap("198.51.100.77:51821"), AllowedIPs: pfx("10.244.1.0/24")},
		{Node: "lost", PublicKey: testKey(2), AllowedIPs: pfx("10.244.2.0/24")},
	}
	if diff := cmp.Diff(want, d.Peers, cmpNet); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"lost:unresolvable-endpoint"}, summary(d.Degraded)); diff != "" {
		t.Errorf("degraded (-want +got):\n%s", diff)
	}
	if len(d.Excluded) != 0 {
		t.Errorf("unexpected exclusions: %v", summary(d.Excluded))
	}
}
