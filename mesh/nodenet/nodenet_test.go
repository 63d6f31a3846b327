package nodenet

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestGateway(t *testing.T) {
	tests := []struct {
		in, want string // want "" means ErrNoGateway
	}{
		{"10.244.1.0/24", "10.244.1.1/24"},
		{"10.244.1.77/24", "10.244.1.1/24"}, // host bits ignored
		{"10.244.0.0/16", "10.244.0.1/16"},
		{"10.244.1.128/25", "10.244.1.129/25"},
		{"10.244.1.0/30", "10.244.1.1/30"},
		{"10.244.1.0/31", ""},
		{"10.244.1.1/32", ""},
		{"fd00:10:244:1::/64", "fd00:10:244:1::1/64"},
		{"fd00:10:244:1::/120", "fd00:10:244:1::1/120"},
		{"fd00::/126", "fd00::1/126"},
		{"fd00::/127", ""},
		{"fd00::1/128", ""},
	}
	for _, tt := range tests {
		got, err := Gateway(netip.MustParsePrefix(tt.in))
		if tt.want == "" {
			if !errors.Is(err, ErrNoGateway) {
				t.Errorf("Gateway(%s) = %v, %v; want ErrNoGateway", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != netip.MustParsePrefix(tt.want) {
			t.Errorf("Gateway(%s) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if _, err := Gateway(netip.Prefix{}); !errors.Is(err, ErrNoGateway) {
		t.Errorf("Gateway(invalid) error = %v, want ErrNoGateway", err)
	}
}

func TestPrefixFromIPNet(t *testing.T) {
	v4in16 := net.ParseIP("10.244.1.5") // 16-byte form
	tests := []struct {
		name string
		in   net.IPNet
		want string // "" means not ok
	}{
		{"ipv4 4-byte", net.IPNet{IP: net.IP{10, 244, 1, 5}, Mask: net.CIDRMask(24, 32)}, "10.244.1.5/24"},
		{"ipv4 16-byte ip, 4-byte mask", net.IPNet{IP: v4in16, Mask: net.CIDRMask(24, 32)}, "10.244.1.5/24"},
		{"ipv4 16-byte ip and mask", net.IPNet{IP: v4in16, Mask: net.CIDRMask(120, 128)}, "10.244.1.5/24"},
		{"ipv4 host route", net.IPNet{IP: net.IP{10, 0, 0, 1}, Mask: net.CIDRMask(32, 32)}, "10.0.0.1/32"},
		{"ipv6", net.IPNet{IP: net.ParseIP("fd00:10:244:1::9"), Mask: net.CIDRMask(64, 128)}, "fd00:10:244:1::9/64"},
		{"ipv6 default", net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, "::/0"},
		{"nil ip", net.IPNet{Mask: net.CIDRMask(24, 32)}, ""},
		{"non-canonical mask", net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.IPMask{255, 0, 255, 0}}, ""},
		{"no mask", net.IPNet{IP: net.IP{10, 0, 0, 0}}, ""},
		{"ipv6 with ipv4 mask", net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(24, 32)}, ""},
		{"ipv4 4-byte ip, 16-byte mask", net.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.CIDRMask(120, 128)}, ""},
		{"ipv4 16-byte mask shorter than 96", net.IPNet{IP: v4in16, Mask: net.CIDRMask(64, 128)}, ""},
	}
	for _, tt := range tests {
		got, ok := PrefixFromIPNet(tt.in)
		if tt.want == "" {
			if ok {
				t.Errorf("%s: PrefixFromIPNet(%v) = %v, want not ok", tt.name, tt.in, got)
			}
			continue
		}
		if !ok || got != netip.MustParsePrefix(tt.want) {
			t.Errorf("%s: PrefixFromIPNet(%v) = %v, %v; want %s", tt.name, tt.in, got, ok, tt.want)
		}
	}
}
