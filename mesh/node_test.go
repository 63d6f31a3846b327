package mesh

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// testKey returns a distinct, valid-looking public key for each i.
func testKey(i byte) wgtypes.Key {
	var k wgtypes.Key
	for j := range k {
		k[j] = i
	}
	k[31] = 0x42
	return k
}

func goodRaw(name string, i byte) RawNode {
	return RawNode{
		Name: name,
		Annotations: map[string]string{
			AnnotationPublicKey: testKey(i).String(),
			AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:51820", 10+int(i)),
		},
		PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)},
	}
}

func with(r RawNode, f func(*RawNode)) RawNode {
	c := r
	c.Annotations = map[string]string{}
	for k, v := range r.Annotations {
		c.Annotations[k] = v
	}
	c.PodCIDRs = append([]string(nil), r.PodCIDRs...)
	f(&c)
	return c
}

func TestParseNodeValid(t *testing.T) {
	base := goodRaw("n1", 1)
	ka := 25 * time.Second
	zero := time.Duration(0)
	tests := []struct {
		name string
		raw  RawNode
		want Node
	}{
		{"plain", base, Node{Name: "n1", PublicKey: testKey(1),
			Endpoint: Endpoint{"198.51.100.11", 51820}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}},
		{"override wins", with(base, func(r *RawNode) { r.Annotations[AnnotationEndpointOverride] = "203.0.113.5:4000" }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"203.0.113.5", 4000},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}},
		{"empty override ignored", with(base, func(r *RawNode) { r.Annotations[AnnotationEndpointOverride] = " " }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"198.51.100.11", 51820},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}},
		{"ipv6 endpoint and dual stack", with(base, func(r *RawNode) {
			r.Annotations[AnnotationEndpoint] = "[2001:db8::1]:51820"
			r.PodCIDRs = []string{"fd00:10:244:1::/64", "10.244.1.0/24"}
		}), Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"2001:db8::1", 51820},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}}},
		{"dns endpoint normalised", with(base, func(r *RawNode) { r.Annotations[AnnotationEndpoint] = "Node-1.Example.org.:51820" }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"node-1.example.org", 51820},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}},
		{"keepalive duration", with(base, func(r *RawNode) { r.Annotations[AnnotationKeepalive] = "25s" }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"198.51.100.11", 51820},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Keepalive: &ka}},
		{"keepalive seconds", with(base, func(r *RawNode) { r.Annotations[AnnotationKeepalive] = "25" }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"198.51.100.11", 51820},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Keepalive: &ka}},
		{"keepalive zero disables", with(base, func(r *RawNode) { r.Annotations[AnnotationKeepalive] = "0" }),
			Node{Name: "n1", PublicKey: testKey(1), Endpoint: Endpoint{"198.51.100.11", 51820},
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Keepalive: &zero}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNode(tt.raw)
			if err != nil {
				t.Fatalf("ParseNode: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("ParseNode mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseNodeInvalid(t *testing.T) {
	base := goodRaw("n1", 1)
	set := func(k, v string) RawNode { return with(base, func(r *RawNode) { r.Annotations[k] = v }) }
	del := func(k string) RawNode { return with(base, func(r *RawNode) { delete(r.Annotations, k) }) }
	cidrs := func(c ...string) RawNode { return with(base, func(r *RawNode) { r.PodCIDRs = c }) }
	tests := []struct {
		name     string
		raw      RawNode
		reason   Reason
		sentinel error
		msg      string // substring of the error
	}{
		{"no key", del(AnnotationPublicKey), ReasonNoPublicKey, ErrMissing, "public-key"},
		{"blank key", set(AnnotationPublicKey, "  "), ReasonNoPublicKey, ErrMissing, "public-key"},
		{"key not base64", set(AnnotationPublicKey, "not-a-key!"), ReasonBadPublicKey, ErrMalformed, "not-a-key!"},
		{"key too short", set(AnnotationPublicKey, "AAAA"), ReasonBadPublicKey, ErrMalformed, "AAAA"},
		{"key all zero", set(AnnotationPublicKey, wgtypes.Key{}.String()), ReasonBadPublicKey, ErrMalformed, "all zero"},
		{"no endpoint", del(AnnotationEndpoint), ReasonNoEndpoint, ErrMissing, "endpoint"},
		{"endpoint no port", set(AnnotationEndpoint, "198.51.100.1"), ReasonBadEndpoint, ErrMalformed, "host:port"},
		{"endpoint port zero", set(AnnotationEndpoint, "198.51.100.1:0"), ReasonBadEndpoint, ErrMalformed, "1-65535"},
		{"endpoint port too big", set(AnnotationEndpoint, "198.51.100.1:65536"), ReasonBadEndpoint, ErrMalformed, "1-65535"},
		{"endpoint port text", set(AnnotationEndpoint, "198.51.100.1:http"), ReasonBadEndpoint, ErrMalformed, "1-65535"},
		{"endpoint v6 unbracketed", set(AnnotationEndpoint, "2001:db8::1:51820"), ReasonBadEndpoint, ErrMalformed, "brackets"},
		{"endpoint empty host", set(AnnotationEndpoint, ":51820"), ReasonBadEndpoint, ErrMalformed, "empty host"},
		{"endpoint bad ip", set(AnnotationEndpoint, "198.51.100.300:51820"), ReasonBadEndpoint, ErrMalformed, "not a valid IP"},
		{"endpoint bad name", set(AnnotationEndpoint, "bad_name.example:51820"), ReasonBadEndpoint, ErrMalformed, "DNS name"},
		{"endpoint unspecified", set(AnnotationEndpoint, "0.0.0.0:51820"), ReasonBadEndpoint, ErrMalformed, "unicast"},
		{"bad override wins over good endpoint", set(AnnotationEndpointOverride, "nope"), ReasonBadEndpoint, ErrMalformed, AnnotationEndpointOverride},
		{"no pod cidr", cidrs(), ReasonNoPodCIDR, ErrMissing, "podCIDRs"},
		{"pod cidr garbage", cidrs("banana"), ReasonBadPodCIDR, ErrMalformed, "banana"},
		{"pod cidr host bits", cidrs("10.244.1.5/24"), ReasonBadPodCIDR, ErrMalformed, "did you mean 10.244.1.0/24"},
		{"pod cidr no length", cidrs("10.244.1.0"), ReasonBadPodCIDR, ErrMalformed, "10.244.1.0"},
		{"pod cidr all traffic", cidrs("0.0.0.0/0"), ReasonBadPodCIDR, ErrNotAllowed, "all traffic"},
		{"pod cidrs overlap each other", cidrs("10.244.0.0/16", "10.244.1.0/24"), ReasonBadPodCIDR, ErrMalformed, "overlaps"},
		{"pod cidr v4-mapped", cidrs("::ffff:10.244.1.0/120"), ReasonBadPodCIDR, ErrMalformed, "IPv4-mapped"},
		{"keepalive garbage", set(AnnotationKeepalive, "often"), ReasonBadKeepalive, ErrMalformed, "often"},
		{"keepalive negative", set(AnnotationKeepalive, "-5"), ReasonBadKeepalive, ErrMalformed, "0-65535"},
		{"keepalive negative duration", set(AnnotationKeepalive, "-5s"), ReasonBadKeepalive, ErrMalformed, "0s-65535s"},
		{"keepalive too big", set(AnnotationKeepalive, "65536"), ReasonBadKeepalive, ErrMalformed, "0-65535"},
		{"keepalive too big duration", set(AnnotationKeepalive, "19h"), ReasonBadKeepalive, ErrMalformed, "0s-65535s"},
		{"keepalive fractional", set(AnnotationKeepalive, "1500ms"), ReasonBadKeepalive, ErrMalformed, "whole seconds"},
		{"keepalive empty", set(AnnotationKeepalive, ""), ReasonBadKeepalive, ErrMalformed, "keepalive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseNode(tt.raw)
			if err == nil {
				t.Fatal("ParseNode accepted bad input")
			}
			var ne *NodeError
			if !errors.As(err, &ne) {
				t.Fatalf("error %v is not a *NodeError", err)
			}
			if ne.Reason != tt.reason || ReasonOf(err) != tt.reason {
				t.Errorf("reason = %q, want %q (err: %v)", ne.Reason, tt.reason, err)
			}
			if ne.Node != "n1" {
				t.Errorf("node = %q, want n1", ne.Node)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Errorf("error %v does not wrap %v", err, tt.sentinel)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
}

func TestEndpointString(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{"198.51.100.1:51820", "198.51.100.1:51820"},
		{"[2001:db8::1]:1", "[2001:db8::1]:1"},
		{"[::ffff:198.51.100.1]:7", "198.51.100.1:7"},
		{"wg.example.org:65535", "wg.example.org:65535"},
	} {
		ep, err := ParseEndpoint(tt.in)
		if err != nil {
			t.Fatalf("ParseEndpoint(%q): %v", tt.in, err)
		}
		if got := ep.String(); got != tt.want {
			t.Errorf("ParseEndpoint(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}
