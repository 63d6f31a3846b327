package ipam

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// addrOpts compares netip values by ==, treating nil and empty slices alike.
var addrOpts = []cmp.Option{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty()}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = addr(s)
	}
	return out
}

// drain takes addresses from the pool until it is exhausted, reserving each,
// and returns them in the order handed out.
func drain(t *testing.T, p *Pool, last netip.Addr, taken map[netip.Addr]bool) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for {
		a, err := p.Next(last, func(a netip.Addr) (bool, error) { return taken[a], nil })
		if errors.Is(err, ErrExhausted) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if taken[a] {
			t.Fatalf("Next returned taken address %s", a)
		}
		taken[a] = true
		out = append(out, a)
		last = a
		if len(out) > 1000 {
			t.Fatal("pool never exhausted")
		}
	}
}

func TestPoolDrain(t *testing.T) {
	tests := []struct {
		name     string
		prefixes []string
		last     string
		taken    []string
		want     []string
	}{
		{
			name:     "ipv4 /29 skips network, gateway and broadcast",
			prefixes: []string{"10.244.1.0/29"},
			want:     []string{"10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"},
		},
		{
			name:     "ipv4 /30 has exactly one pod address",
			prefixes: []string{"10.244.1.4/30"},
			want:     []string{"10.244.1.6"},
		},
		{
			name:     "starts after last reserved and wraps",
			prefixes: []string{"10.244.1.0/29"},
			last:     "10.244.1.4",
			want:     []string{"10.244.1.5", "10.244.1.6", "10.244.1.2", "10.244.1.3", "10.244.1.4"},
		},
		{
			name:     "last reserved outside the pool starts at the bottom",
			prefixes: []string{"10.244.1.0/29"},
			last:     "10.244.9.4",
			want:     []string{"10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"},
		},
		{
			name:     "last reserved is the gateway: start at the bottom",
			prefixes: []string{"10.244.1.0/29"},
			last:     "10.244.1.1",
			want:     []string{"10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"},
		},
		{
			name:     "skips taken addresses",
			prefixes: []string{"10.244.1.0/29"},
			taken:    []string{"10.244.1.2", "10.244.1.5"},
			want:     []string{"10.244.1.3", "10.244.1.4", "10.244.1.6"},
		},
		{
			name:     "several prefixes are one space, in order, wrapping",
			prefixes: []string{"10.244.1.0/30", "10.244.2.0/29"},
			last:     "10.244.2.5",
			want:     []string{"10.244.2.6", "10.244.1.2", "10.244.2.2", "10.244.2.3", "10.244.2.4", "10.244.2.5"},
		},
		{
			name:     "ipv6 skips network and gateway, last address usable",
			prefixes: []string{"fd00:10:244:1::/125"},
			want: []string{"fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244:1::4", "fd00:10:244:1::5",
				"fd00:10:244:1::6", "fd00:10:244:1::7"},
		},
		{
			name:     "ipv6 /126",
			prefixes: []string{"fd00::/126"},
			last:     "fd00::2",
			want:     []string{"fd00::3", "fd00::2"},
		},
		{
			name:     "everything taken",
			prefixes: []string{"10.244.1.0/30"},
			taken:    []string{"10.244.1.2"},
			want:     nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []netip.Prefix
			for _, s := range tt.prefixes {
				ps = append(ps, pfx(s))
			}
			p, err := NewPool(ps...)
			if err != nil {
				t.Fatal(err)
			}
			var last netip.Addr
			if tt.last != "" {
				last = addr(tt.last)
			}
			taken := map[netip.Addr]bool{}
			for _, s := range tt.taken {
				taken[addr(s)] = true
			}
			got := drain(t, p, last, taken)
			if diff := cmp.Diff(addrs(tt.want...), got, addrOpts...); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
			if uint64(len(got)+len(tt.taken)) != p.Size() {
				t.Errorf("handed out %d + %d taken, Size() = %d", len(got), len(tt.taken), p.Size())
			}
		})
	}
}

func TestPoolExhaustedMessage(t *testing.T) {
	p, err := NewPool(pfx("10.244.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Next(netip.Addr{}, func(netip.Addr) (bool, error) { return true, nil })
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if got, want := err.Error(), "no free address in 10.244.1.0/24"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

func TestPoolTakenError(t *testing.T) {
	p, _ := NewPool(pfx("10.244.1.0/24"))
	boom := errors.New("disk on fire")
	_, err := p.Next(netip.Addr{}, func(netip.Addr) (bool, error) { return false, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
}

func TestNewPoolRejects(t *testing.T) {
	tests := []struct {
		name     string
		prefixes []netip.Prefix
		want     string
	}{
		{"none", nil, "at least one prefix"},
		{"zero", []netip.Prefix{{}}, "not a prefix"},
		{"host bits", []netip.Prefix{pfx("10.244.1.5/24")}, "has host bits set (did you mean 10.244.1.0/24?)"},
		{"ipv4 /31", []netip.Prefix{pfx("10.244.1.0/31")}, "too small"},
		{"ipv4 /32", []netip.Prefix{pfx("10.244.1.1/32")}, "too small"},
		{"ipv6 /127", []netip.Prefix{pfx("fd00::/127")}, "too small"},
		{"mixed families", []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00::/64")}, "different address families"},
		{"overlap", []netip.Prefix{pfx("10.244.0.0/16"), pfx("10.244.1.0/24")}, "overlaps"},
		{"duplicate", []netip.Prefix{pfx("10.244.1.0/24"), pfx("10.244.1.0/24")}, "overlaps"},
		{"v4-mapped", []netip.Prefix{pfx("::ffff:10.244.1.0/120")}, "plain IPv4 or IPv6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool(tt.prefixes...)
			if !errors.Is(err, ErrInvalidPrefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrInvalidPrefix containing %q", err, tt.want)
			}
		})
	}
}

func TestPoolSizeAndUsable(t *testing.T) {
	tests := []struct {
		prefixes []string
		size     uint64
		usable   []string
		unusable []string
	}{
		{[]string{"10.244.0.0/16"}, 65533, []string{"10.244.0.2", "10.244.255.254", "10.244.1.0", "10.244.0.255"}, []string{"10.244.0.0", "10.244.0.1", "10.244.255.255", "10.245.0.2"}},
		{[]string{"10.244.1.0/24", "10.244.2.0/24"}, 506, []string{"10.244.2.2"}, []string{"10.244.2.1", "10.244.3.2"}},
		{[]string{"fd00::/64"}, math.MaxUint64, []string{"fd00::ffff:ffff:ffff:ffff"}, []string{"fd00::", "fd00::1"}},
		{[]string{"fd00::/120"}, 254, []string{"fd00::ff"}, []string{"fd00::1"}},
	}
	for _, tt := range tests {
		var ps []netip.Prefix
		for _, s := range tt.prefixes {
			ps = append(ps, pfx(s))
		}
		p, err := NewPool(ps...)
		if err != nil {
			t.Fatal(err)
		}
		if p.Size() != tt.size {
			t.Errorf("%v: Size() = %d, want %d", tt.prefixes, p.Size(), tt.size)
		}
		for _, s := range tt.usable {
			if !p.Usable(addr(s)) {
				t.Errorf("%v: %s should be usable", tt.prefixes, s)
			}
		}
		for _, s := range tt.unusable {
			if p.Usable(addr(s)) {
				t.Errorf("%v: %s should not be usable", tt.prefixes, s)
			}
		}
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.1.0/24":    "10.244.1.255",
		"10.244.0.0/16":    "10.244.255.255",
		"10.244.1.4/30":    "10.244.1.7",
		"10.0.0.0/9":       "10.127.255.255",
		"fd00::/64":        "fd00::ffff:ffff:ffff:ffff",
		"fd00:0:0:10::/61": "fd00:0:0:17:ffff:ffff:ffff:ffff",
	} {
		if got := lastAddr(pfx(in)); got != addr(want) {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}
