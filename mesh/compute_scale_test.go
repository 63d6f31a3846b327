package mesh

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// computePairwise is Compute's CIDR-conflict rule written the direct way:
// every candidate against every accepted node. TestComputeMatchesPairwise
// checks that the indexed version decides exactly like it.
func computePairwise(in Input) []string {
	var cands []candidate
	for _, raw := range in.Nodes {
		if raw.Name == in.Self.Name {
			continue
		}
		n, err := ParseNode(raw)
		if err != nil || n.PublicKey == in.Self.PublicKey {
			continue
		}
		if _, _, ok := firstOverlap(n.PodCIDRs, in.Self.PodCIDRs); ok {
			continue
		}
		cands = append(cands, candidate{node: n, incumbent: isIncumbent(n, in.Configured, in.KnownKeys)})
	}
	slices.SortFunc(cands, func(a, b candidate) int { // Compute's priority order
		if a.incumbent != b.incumbent {
			if a.incumbent {
				return -1
			}
			return 1
		}
		if c := a.node.Created.Compare(b.node.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.node.Name, b.node.Name)
	})
	keys := map[wgtypes.Key]bool{}
	var accepted []Node
	var names []string
	for _, c := range cands {
		if keys[c.node.PublicKey] {
			continue
		}
		if _, _, _, ok := overlapWith(c.node, accepted); ok {
			continue
		}
		keys[c.node.PublicKey] = true
		accepted = append(accepted, c.node)
		names = append(names, c.node.Name)
	}
	return names
}

// randomCluster makes n nodes with pod prefixes of mixed lengths drawn from
// a small space, so that overlaps (nested and equal) are common; some
// nodes have two prefixes and some share a key.
func randomCluster(r *rand.Rand, n int) []RawNode {
	keys := make([]wgtypes.Key, n)
	for i := range keys {
		keys[i][0], keys[i][1], keys[i][31] = byte(i), byte(i>>8), 1
	}
	var nodes []RawNode
	for i := range n {
		cidr := func() string {
			bits := 20 + r.IntN(9) // /20../28 inside 10.244.0.0/16
			a := netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(8)), byte(r.IntN(256))})
			return netip.PrefixFrom(a, bits).Masked().String()
		}
		cidrs := []string{cidr()}
		if r.IntN(5) == 0 {
			cidrs = append(cidrs, cidr())
		}
		k := keys[i]
		if r.IntN(10) == 0 {
			k = keys[r.IntN(n)]
		}
		nodes = append(nodes, RawNode{
			Name:        fmt.Sprintf("n%03d", i),
			PodCIDRs:    cidrs,
			Created:     time.Unix(int64(r.IntN(50)), 0),
			Annotations: map[string]string{AnnotationPublicKey: k.String(), AnnotationEndpoint: fmt.Sprintf("198.51.100.%d:51820", 1+i%250)},
		})
	}
	return nodes
}

func TestComputeMatchesPairwise(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		nodes := randomCluster(r, 2+r.IntN(60))
		in := Input{Self: Self{Name: "self", PodCIDRs: pfx("10.244.200.0/24")}, Nodes: nodes}
		var got []string
		for _, p := range Compute(in).Peers {
			got = append(got, p.Node)
		}
		want := computePairwise(in)
		// Compute sorts peers by name; the reference keeps priority order.
		wantSet := map[string]bool{}
		for _, n := range want {
			wantSet[n] = true
		}
		gotSet := map[string]bool{}
		for _, n := range got {
			gotSet[n] = true
		}
		if diff := gocmp.Diff(wantSet, gotSet); diff != "" {
			t.Fatalf("seed %d: accepted nodes differ from the pairwise rule (-want +got)\n%s", seed, diff)
		}
	}
}

func TestConflicting(t *testing.T) {
	mk := func(cidrs ...[]string) []candidate {
		var cs []candidate
		for _, c := range cidrs {
			cs = append(cs, candidate{node: Node{PodCIDRs: pfx(c...)}})
		}
		return cs
	}
	tests := []struct {
		name  string
		cands []candidate
		want  []bool
	}{
		{"disjoint", mk([]string{"10.244.1.0/24"}, []string{"10.244.2.0/24"}), []bool{false, false}},
		{"equal", mk([]string{"10.244.1.0/24"}, []string{"10.244.1.0/24"}), []bool{true, true}},
		{"nested", mk([]string{"10.244.0.0/16"}, []string{"10.244.9.0/24"}, []string{"10.245.0.0/24"}), []bool{true, true, false}},
		{"deep chain, sibling left", mk([]string{"10.244.0.0/16"}, []string{"10.244.1.0/24"}, []string{"10.244.1.128/25"}, []string{"10.244.2.0/24"}),
			[]bool{true, true, true, true}},
		{"own prefixes overlap", mk([]string{"10.244.0.0/16", "10.244.1.0/24"}, []string{"10.245.0.0/24"}), []bool{false, false}},
		{"families", mk([]string{"10.244.1.0/24"}, []string{"fd00::/64"}, []string{"fd00::/48"}), []bool{false, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := gocmp.Diff(tt.want, conflicting(tt.cands)); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

// BenchmarkCompute5000 is one agent's Compute over a 5000-node cluster
// without conflicts (the common case).
func BenchmarkCompute5000(b *testing.B) {
	var nodes []RawNode
	for i := range 5000 {
		var k wgtypes.Key
		k[0], k[1], k[31] = byte(i), byte(i>>8), 1
		pod := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i * 8 >> 8), byte(i * 8)}), 29)
		nodes = append(nodes, RawNode{Name: fmt.Sprintf("node-%05d", i), PodCIDRs: []string{pod.String()},
			Annotations: map[string]string{AnnotationPublicKey: k.String(), AnnotationEndpoint: fmt.Sprintf("198.51.100.%d:%d", 10+i%240, 20000+i)}})
	}
	in := Input{Self: Self{Name: "node-00000", PodCIDRs: pfx("10.244.0.0/29")}, Nodes: nodes}
	b.ReportAllocs()
	for b.Loop() {
		if d := Compute(in); len(d.Peers) != 4999 {
			b.Fatalf("%d peers", len(d.Peers))
		}
	}
}
