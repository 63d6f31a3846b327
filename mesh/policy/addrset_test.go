package policy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func rng(from, to string) Range { return Range{netip.MustParseAddr(from), netip.MustParseAddr(to)} }

var addrCmp = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}

func TestRanges(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []Range
	}{
		{"empty", nil, nil},
		{"single host", []string{"10.0.0.1/32"}, []Range{rng("10.0.0.1", "10.0.0.1")}},
		{"adjacent merge", []string{"10.0.0.2/32", "10.0.0.0/31", "10.0.0.3/32"}, []Range{rng("10.0.0.0", "10.0.0.3")}},
		{"overlap and containment", []string{"10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8"}, []Range{rng("10.0.0.0", "11.255.255.255")}},
		{"gap kept", []string{"10.0.0.0/32", "10.0.0.2/32"}, []Range{rng("10.0.0.0", "10.0.0.0"), rng("10.0.0.2", "10.0.0.2")}},
		{"families never merge", []string{"::/0", "0.0.0.0/0"}, []Range{rng("0.0.0.0", "255.255.255.255"), rng("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}},
		{"end of the v4 space", []string{"255.255.255.255/32", "255.255.255.254/32"}, []Range{rng("255.255.255.254", "255.255.255.255")}},
		{"host bits are masked", []string{"10.0.0.7/24"}, []Range{rng("10.0.0.0", "10.0.0.255")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, Ranges(pfx(tt.in...)), addrCmp); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestBlockRangesAndPrefixes(t *testing.T) {
	tests := []struct {
		name  string
		block IPBlock
		want  []string
	}{
		{"no except", IPBlock{CIDR: netip.MustParsePrefix("192.0.2.0/24")}, []string{"192.0.2.0/24"}},
		{"except first half", IPBlock{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Except: pfx("192.0.2.0/25")}, []string{"192.0.2.128/25"}},
		{"except a host in the middle", IPBlock{CIDR: netip.MustParsePrefix("192.0.2.0/29"), Except: pfx("192.0.2.3/32")},
			[]string{"192.0.2.0/31", "192.0.2.2/32", "192.0.2.4/30"}},
		{"overlapping excepts", IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: pfx("10.0.0.0/9", "10.0.0.0/16", "10.255.255.255/32")},
			[]string{"10.128.0.0/10", "10.192.0.0/11", "10.224.0.0/12", "10.240.0.0/13", "10.248.0.0/14", "10.252.0.0/15",
				"10.254.0.0/16", "10.255.0.0/17", "10.255.128.0/18", "10.255.192.0/19", "10.255.224.0/20", "10.255.240.0/21",
				"10.255.248.0/22", "10.255.252.0/23", "10.255.254.0/24", "10.255.255.0/25", "10.255.255.128/26", "10.255.255.192/27",
				"10.255.255.224/28", "10.255.255.240/29", "10.255.255.248/30", "10.255.255.252/31", "10.255.255.254/32"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &AddrSet{Ranges: blockRanges(tt.block)}
			if d := cmp.Diff(pfx(tt.want...), s.Prefixes(), addrCmp); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	t.Run("everything but one v6 host", func(t *testing.T) {
		s := &AddrSet{Ranges: blockRanges(IPBlock{CIDR: netip.MustParsePrefix("::/0"), Except: pfx("::1/128")})}
		ps := s.Prefixes()
		// ::/128 plus one prefix per bit length 127..1 covering the rest.
		if len(ps) != 128 || ps[0] != netip.MustParsePrefix("::/128") || ps[len(ps)-1] != netip.MustParsePrefix("8000::/1") {
			t.Errorf("got %d prefixes, first %v last %v", len(ps), ps[0], ps[len(ps)-1])
		}
		for _, p := range ps {
			if p.Contains(netip.MustParseAddr("::1")) {
				t.Errorf("%s contains the excepted ::1", p)
			}
		}
	})
}

func TestRangePrefixesRoundTrip(t *testing.T) {
	// Every range between a few awkward bounds turns into prefixes that
	// cover it exactly, in order, without overlap.
	bounds := []string{"0.0.0.0", "0.0.0.1", "10.0.0.0", "10.0.0.7", "10.0.0.8", "10.0.1.255", "192.168.3.4", "255.255.255.254", "255.255.255.255"}
	for i, f := range bounds {
		for _, to := range bounds[i:] {
			r := rng(f, to)
			ps := rangePrefixes(r)
			if ps[0].Addr() != r.From || lastAddr(ps[len(ps)-1]) != r.To {
				t.Fatalf("%v: prefixes %v do not span it", r, ps)
			}
			for j := 1; j < len(ps); j++ {
				if lastAddr(ps[j-1]).Next() != ps[j].Addr() {
					t.Fatalf("%v: gap or overlap between %v and %v", r, ps[j-1], ps[j])
				}
			}
			if got := Ranges(ps); len(got) != 1 || got[0] != r {
				t.Fatalf("%v: prefixes %v merge back to %v", r, ps, got)
			}
		}
	}
}
