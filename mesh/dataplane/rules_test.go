package dataplane

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestRulesFor(t *testing.T) {
	base := Firewall{Table: "wgmesh", Bridge: "br", WGInterface: "wg", ClusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56")}
	accepts := func(chain string) []Rule {
		return []Rule{
			{Chain: chain, IIF: "br", OIF: "wg", Verdict: VerdictAccept, Note: "pods to the mesh"},
			{Chain: chain, IIF: "wg", OIF: "br", Verdict: VerdictAccept, Note: "mesh to pods"},
			{Chain: chain, IIF: "br", OIF: "br", Verdict: VerdictAccept, Note: "pod to pod on this node"},
			{Chain: chain, IIF: "br", Verdict: VerdictAccept, Note: "pods to outside the cluster"},
			{Chain: chain, OIF: "br", Established: true, Verdict: VerdictAccept, Note: "replies to pods"},
		}
	}
	tests := []struct {
		name  string
		local []netip.Prefix
		clust []netip.Prefix
		nat   []Rule
	}{
		{name: "no local pod cidr: no NAT", nat: nil},
		{
			name:  "ipv4",
			local: pfx("10.244.1.0/24"),
			nat: []Rule{{
				Chain: ChainPostrouting, NotOIF: []string{"br", "wg"}, Src: netip.MustParsePrefix("10.244.1.0/24"),
				NotDst: pfx("10.244.0.0/16"), Verdict: VerdictMasquerade,
				Note: "masquerade pods of 10.244.1.0/24 leaving the cluster",
			}},
		},
		{
			name:  "dual stack takes each family's cluster range",
			local: pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
			nat: []Rule{
				{
					Chain: ChainPostrouting, NotOIF: []string{"br", "wg"}, Src: netip.MustParsePrefix("10.244.1.0/24"),
					NotDst: pfx("10.244.0.0/16"), Verdict: VerdictMasquerade,
					Note: "masquerade pods of 10.244.1.0/24 leaving the cluster",
				},
				{
					Chain: ChainPostrouting, NotOIF: []string{"br", "wg"}, Src: netip.MustParsePrefix("fd00:10:244:1::/64"),
					NotDst: pfx("fd00:10:244::/56"), Verdict: VerdictMasquerade,
					Note: "masquerade pods of fd00:10:244:1::/64 leaving the cluster",
				},
			},
		},
		{
			name:  "cluster cidrs missing the local range still exclude it",
			local: pfx("10.99.1.0/24"),
			nat: []Rule{{
				Chain: ChainPostrouting, NotOIF: []string{"br", "wg"}, Src: netip.MustParsePrefix("10.99.1.0/24"),
				NotDst: pfx("10.244.0.0/16", "10.99.1.0/24"), Verdict: VerdictMasquerade,
				Note: "masquerade pods of 10.99.1.0/24 leaving the cluster",
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw := base
			fw.LocalPodCIDRs = tt.local
			got := rulesFor(fw)
			clamp := []Rule{
				{Chain: ChainForward, OIF: "wg", TCPSyn: true, Verdict: VerdictClampMSS, Note: "clamp tcp mss to the route mtu into the mesh"},
				{Chain: ChainForward, IIF: "wg", TCPSyn: true, Verdict: VerdictClampMSS, Note: "clamp tcp mss to the route mtu out of the mesh"},
			}
			want := map[string][]Rule{
				ChainForward:       append(clamp, accepts(ChainForward)...),
				ChainCompatForward: accepts(ChainCompatForward),
				ChainPostrouting:   tt.nat,
			}
			if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Prefix{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("rulesFor (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRuleCommentFingerprintsEveryField(t *testing.T) {
	r := Rule{Chain: ChainPostrouting, NotOIF: []string{"br"}, Src: netip.MustParsePrefix("10.244.1.0/24"),
		NotDst: pfx("10.244.0.0/16"), Verdict: VerdictMasquerade, Note: "n"}
	variants := []Rule{r, r, r, r, r, r, r, r, r, r}
	variants[1].NotDst = pfx("10.0.0.0/8")
	variants[2].NotOIF = []string{"br", "wg"}
	variants[3].Src = netip.MustParsePrefix("10.244.2.0/24")
	variants[4].Chain = ChainForward
	variants[5].Verdict = VerdictAccept
	variants[6].Established = true
	variants[7].Dst = netip.MustParsePrefix("10.244.0.0/16")
	variants[8].TCPSyn = true
	variants[9].IIF = "wg"
	seen := map[string]int{}
	for i, v := range variants {
		c := v.Comment()
		if !strings.HasPrefix(c, CommentPrefix) {
			t.Errorf("comment %q lacks our prefix", c)
		}
		if j, dup := seen[c]; dup {
			t.Errorf("variants %d and %d share comment %q", j, i, c)
		}
		seen[c] = i
	}
	// Rules that do not use the fields added later keep the comment
	// they had before those fields existed (no table churn on upgrade).
	old := Rule{Chain: ChainForward, IIF: "br", OIF: "wg", Verdict: VerdictAccept, Note: "pods to the mesh"}
	if got, want := old.Comment(), "wgmesh: pods to the mesh #50c6a997"; got != want {
		t.Errorf("comment of an unchanged rule = %q, want %q", got, want)
	}
	long := r
	long.Note = strings.Repeat("x", 300)
	if c := long.Comment(); len(c) > 128 || !strings.Contains(c, " #") {
		t.Errorf("long comment not shortened with its hash kept: %d bytes", len(c))
	}
}

func TestChooseMTU(t *testing.T) {
	lo := LinkInfo{Name: "lo", Index: 1, MTU: 65536, Up: true, Loopback: true}
	eth0 := LinkInfo{Name: "eth0", Index: 2, MTU: 1500, Up: true}
	eth1 := LinkInfo{Name: "eth1", Index: 3, MTU: 9000, Up: true}
	down := LinkInfo{Name: "eth2", Index: 4, MTU: 1400}
	wg := LinkInfo{Name: "wgmesh0", Index: 5, MTU: 1420, Up: true}
	tests := []struct {
		name  string
		links []LinkInfo
		def   int
		want  int
	}{
		{"default route interface", []LinkInfo{lo, eth0, eth1}, 3, 8920},
		{"no default route: first up non-loopback", []LinkInfo{lo, eth1, eth0, down}, 0, 1420},
		{"default route on excluded interface falls back", []LinkInfo{lo, wg, eth1}, 5, 8920},
		{"only loopback and down links", []LinkInfo{lo, down}, 0, FallbackMTU},
		{"nothing", nil, 0, FallbackMTU},
		{"small underlay", []LinkInfo{{Name: "eth0", Index: 2, MTU: 1280, Up: true}}, 2, 1200},
		// An IPv6-only node's default route is an IPv6 one (LinkInfos
		// falls back to it); 80 bytes is the IPv6 underlay's overhead
		// (40 IPv6 + 8 UDP + 32 WireGuard), so the result fits either family.
		{"ipv6-only underlay", []LinkInfo{lo, eth0}, 2, 1500 - 40 - 8 - 32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ChooseMTU(tt.links, tt.def, "wgmesh0", "wgmesh-br0"); got != tt.want {
				t.Errorf("ChooseMTU = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestGuardRules(t *testing.T) {
	g := Guard{Table: "wgmesh-guard", WGInterface: "wg", Bridge: "br", ClusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56")}
	allowed := []string{"wg", "br", "lo"}
	want := []Rule{
		{Chain: ChainGuard, NotOIF: allowed, Dst: netip.MustParsePrefix("10.244.0.0/16"), Verdict: VerdictDrop, Note: "fail closed: 10.244.0.0/16 only through the mesh"},
		{Chain: ChainGuard, NotOIF: allowed, Src: netip.MustParsePrefix("10.244.0.0/16"), Verdict: VerdictDrop, Note: "fail closed: 10.244.0.0/16 sources only through the mesh"},
		{Chain: ChainGuard, NotOIF: allowed, Dst: netip.MustParsePrefix("fd00:10:244::/56"), Verdict: VerdictDrop, Note: "fail closed: fd00:10:244::/56 only through the mesh"},
		{Chain: ChainGuard, NotOIF: allowed, Src: netip.MustParsePrefix("fd00:10:244::/56"), Verdict: VerdictDrop, Note: "fail closed: fd00:10:244::/56 sources only through the mesh"},
	}
	if diff := cmp.Diff(want, guardRules(g), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("guardRules (-want +got):\n%s", diff)
	}
}
