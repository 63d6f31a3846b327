package policy

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
)

// Range is an inclusive address range of one family.
type Range struct{ From, To netip.Addr }

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func prefixRange(p netip.Prefix) Range { return Range{p.Masked().Addr(), lastAddr(p)} }

// mergeRanges sorts rs and joins overlapping and adjacent ranges. IPv4
// ranges sort before IPv6 ones and never merge with them.
func mergeRanges(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	return mergeRangesInPlace(slices.Clone(rs))
}

// mergeRangesInPlace is mergeRanges reusing rs's storage.
func mergeRangesInPlace(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	// Pod addresses usually arrive in order (the compiler keeps pods
	// sorted by address): checking is much cheaper than sorting.
	if !slices.IsSortedFunc(rs, compareRange) {
		slices.SortFunc(rs, compareRange)
	}
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		next := cur.To.Next() // invalid after the family's last address
		if cur.From.Is4() == r.From.Is4() && (r.From.Compare(cur.To) <= 0 || (next.IsValid() && r.From == next)) {
			if r.To.Compare(cur.To) > 0 {
				cur.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// subtract removes e from every range of rs.
func subtract(rs []Range, e Range) []Range {
	var out []Range
	for _, r := range rs {
		if r.From.Is4() != e.From.Is4() || e.To.Compare(r.From) < 0 || e.From.Compare(r.To) > 0 {
			out = append(out, r) // disjoint
			continue
		}
		if e.From.Compare(r.From) > 0 {
			out = append(out, Range{r.From, e.From.Prev()})
		}
		if e.To.Compare(r.To) < 0 {
			out = append(out, Range{e.To.Next(), r.To})
		}
	}
	return out
}

// rangePrefixes covers r with the fewest prefixes: at each step the
// largest block that starts aligned at From and does not pass To.
func rangePrefixes(r Range) []netip.Prefix {
	var out []netip.Prefix
	from, to := u128Of(r.From), u128Of(r.To)
	bitLen := r.From.BitLen()
	for {
		// Host bits: limited by From's alignment and by the range size.
		host := min(from.trailingZeros(), bitLen)
		for host > 0 && from.add(u128{}.setBit(host).sub1()).greater(to) {
			host--
		}
		p := netip.PrefixFrom(from.addr(r.From.Is4()), bitLen-host)
		out = append(out, p)
		last := from.add(u128{}.setBit(host).sub1())
		if !last.less(to) {
			return out
		}
		from = last.add1()
	}
}

// u128 is an address as a 128-bit number, for range arithmetic.
type u128 struct{ hi, lo uint64 }

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	if a.Is4() {
		return u128{lo: uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])}
	}
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		return netip.AddrFrom4([4]byte{byte(u.lo >> 24), byte(u.lo >> 16), byte(u.lo >> 8), byte(u.lo)})
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u u128) trailingZeros() int {
	if u.lo != 0 {
		return bits.TrailingZeros64(u.lo)
	}
	if u.hi != 0 {
		return 64 + bits.TrailingZeros64(u.hi)
	}
	return 128
}

// setBit returns u with bit n set (n in 0..128; 128 sets nothing and makes
// sub1 yield all ones).
func (u u128) setBit(n int) u128 {
	switch {
	case n < 64:
		u.lo |= 1 << n
	case n < 128:
		u.hi |= 1 << (n - 64)
	}
	return u
}

func (u u128) sub1() u128 {
	if u.lo == 0 {
		u.hi--
	}
	u.lo--
	return u
}

func (u u128) add1() u128 {
	u.lo++
	if u.lo == 0 {
		u.hi++
	}
	return u
}

func (u u128) add(v u128) u128 {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, c)
	return u128{hi, lo}
}

func (u u128) less(v u128) bool    { return u.hi < v.hi || u.hi == v.hi && u.lo < v.lo }
func (u u128) greater(v u128) bool { return v.less(u) }

// Ranges returns the addresses of ps as sorted, disjoint, non-adjacent
// ranges.
func Ranges(ps []netip.Prefix) []Range {
	rs := make([]Range, 0, len(ps))
	for _, p := range ps {
		rs = append(rs, prefixRange(p))
	}
	return mergeRanges(rs)
}

// blockRanges is the address set of an IP block: CIDR minus Except.
func blockRanges(b IPBlock) []Range {
	rs := []Range{prefixRange(b.CIDR)}
	for _, e := range b.Except {
		rs = subtract(rs, prefixRange(e))
	}
	return mergeRanges(rs)
}
