package e2e

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// ipv6Frame builds an Ethernet frame of IPv6 from src to dst whose payload
// starts with next header nh.
func ipv6Frame(src, dst string, nh byte, payload []byte) []byte {
	b := make([]byte, 14+40, 14+40+len(payload))
	b[12], b[13] = 0x86, 0xdd
	ip := b[14:]
	ip[0] = 0x60
	ip[4], ip[5] = byte(len(payload)>>8), byte(len(payload))
	ip[6], ip[7] = nh, 1
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	return append(b, payload...)
}

// The wire checks classify frames by the protocol past IPv6's extension
// headers: an MLDv2 report (behind a hop-by-hop router alert) was once
// reported as "proto 0" plaintext on the underlay.
func TestParseEthernetIPv6ExtensionHeaders(t *testing.T) {
	hbh := func(next byte) []byte { // router alert (5, 2, 0, 0), PadN (1, 0)
		return []byte{next, 0, 5, 2, 0, 0, 1, 0}
	}
	mld := append(hbh(58), 143, 0, 0, 0, 0, 0, 0, 0)
	udp := append(append(hbh(60), 17, 1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0xca, 0x6c, 0xca, 0x6d, 0, 8, 0, 0)
	tests := []struct {
		name  string
		raw   []byte
		proto uint8
		sport uint16
		dport uint16
		l4    int
		icmp  int
	}{
		{name: "mldv2 report behind hop-by-hop", raw: ipv6Frame("fe80::1", "ff02::16", 0, mld), proto: 58, l4: 14 + 40 + 8, icmp: 143},
		{name: "udp behind hop-by-hop and destination options", raw: ipv6Frame("2001:db8:100::11", "2001:db8:100::12", 0, udp), proto: 17, sport: 51820, dport: 51821, l4: 14 + 40 + 8 + 16, icmp: -1},
		{name: "neighbour solicitation, no extension", raw: ipv6Frame("fe80::1", "ff02::1:ff00:12", 58, []byte{135, 0, 0, 0, 0, 0, 0, 0}), proto: 58, l4: 14 + 40, icmp: 135},
		{name: "fragment header stays the protocol", raw: ipv6Frame("2001:db8:100::11", "2001:db8:100::12", 44, []byte{17, 0, 0, 1, 0, 0, 0, 1}), proto: 44, l4: 14 + 40, icmp: -1},
		{name: "truncated hop-by-hop", raw: ipv6Frame("fe80::1", "ff02::16", 0, []byte{58, 0, 5, 2}), proto: 0, l4: 14 + 40, icmp: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := parseEthernet(tt.raw)
			type got struct {
				Proto            uint8
				SrcPort, DstPort uint16
				L4, ICMP         int
			}
			if diff := cmp.Diff(got{tt.proto, tt.sport, tt.dport, tt.l4, tt.icmp}, got{f.Proto, f.SrcPort, f.DstPort, f.L4, icmp6Type(f)}); diff != "" {
				t.Errorf("parse (-want +got):\n%s", diff)
			}
		})
	}
}
