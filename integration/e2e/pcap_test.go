package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// frame is what the wire test needs to know about one captured Ethernet frame.
type frame struct {
	EtherType uint16
	// For IPv4/IPv6:
	Proto            uint8 // IP protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), past IPv6 extension headers
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	// L4 is, for IPv6, the offset in Raw of the header Proto names (0:
	// none parsed).
	L4 int
	// For ARP: the sender and target protocol addresses.
	ARPSender, ARPTarget netip.Addr
	Raw                  []byte
}

// readPcap parses a classic pcap file of Ethernet frames, as tcpdump -w writes.
func readPcap(path string) ([]frame, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < 24 {
		return nil, errors.New("pcap: short file header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data[0:4]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: bad magic %x", data[0:4])
	}
	if lt := bo.Uint32(data[20:24]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet (1)", lt)
	}
	var frames []frame
	for off := 24; off < len(data); {
		if off+16 > len(data) {
			return nil, errors.New("pcap: truncated record header")
		}
		incl := int(bo.Uint32(data[off+8 : off+12]))
		off += 16
		if off+incl > len(data) {
			return nil, errors.New("pcap: truncated record")
		}
		frames = append(frames, parseEthernet(data[off:off+incl]))
		off += incl
	}
	return frames, nil
}

func parseEthernet(b []byte) frame {
	f := frame{Raw: b}
	if len(b) < 14 {
		return f
	}
	f.EtherType = binary.BigEndian.Uint16(b[12:14])
	p := b[14:]
	if f.EtherType == 0x8100 && len(p) >= 4 { // VLAN tag: not expected, but do not misparse
		f.EtherType = binary.BigEndian.Uint16(p[2:4])
		p = p[4:]
	}
	switch f.EtherType {
	case 0x0800:
		if len(p) < 20 {
			return f
		}
		ihl := int(p[0]&0x0f) * 4
		f.Proto = p[9]
		f.Src, _ = netip.AddrFromSlice(p[12:16])
		f.Dst, _ = netip.AddrFromSlice(p[16:20])
		if len(p) >= ihl+4 && (f.Proto == 6 || f.Proto == 17) {
			f.SrcPort = binary.BigEndian.Uint16(p[ihl : ihl+2])
			f.DstPort = binary.BigEndian.Uint16(p[ihl+2 : ihl+4])
		}
	case 0x86dd:
		if len(p) < 40 {
			return f
		}
		f.Src, _ = netip.AddrFromSlice(p[8:24])
		f.Dst, _ = netip.AddrFromSlice(p[24:40])
		// Skip the extension headers that carry options only (hop-by-hop,
		// routing, destination options): an MLD report always comes behind
		// a hop-by-hop router alert. A fragment header (44) or a truncated
		// one is left as the protocol, for the caller to reject.
		next, off := p[6], 40
		for (next == 0 || next == 43 || next == 60) && len(p) >= off+8 {
			next, off = p[off], off+8+8*int(p[off+1])
		}
		f.Proto = next
		if off <= len(p) {
			f.L4 = len(b) - len(p) + off
		}
		if len(p) >= off+4 && (f.Proto == 6 || f.Proto == 17) {
			f.SrcPort = binary.BigEndian.Uint16(p[off : off+2])
			f.DstPort = binary.BigEndian.Uint16(p[off+2 : off+4])
		}
	case 0x0806:
		// Ethernet/IPv4 ARP: sender IP at 14, target IP at 24.
		if len(p) >= 28 {
			f.ARPSender, _ = netip.AddrFromSlice(p[14:18])
			f.ARPTarget, _ = netip.AddrFromSlice(p[24:28])
		}
	}
	return f
}
