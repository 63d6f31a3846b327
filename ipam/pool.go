// Package ipam hands out pod addresses from a node's podCIDRs.
//
// It is split the way host-local is: a pure allocator (Pool) that only knows
// the order in which addresses are tried, and a Store that records who holds
// which address. IPAM glues them together under the store's lock. Nothing
// here touches the network.
package ipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
)

var (
	// ErrExhausted means every usable address of a pool is reserved.
	ErrExhausted = errors.New("no free address")
	// ErrInvalidPrefix means a prefix cannot be allocated from.
	ErrInvalidPrefix = errors.New("invalid prefix")
)

// Pool is the set of prefixes of one address family that are allocated as a
// single space: an attachment gets one address from the pool, from whichever
// prefix has room. In every prefix the network address, the gateway (the
// first address after the network) and, for IPv4, the broadcast address are
// never handed out. IPv6 has no broadcast, so its last address is usable.
type Pool struct {
	prefixes []netip.Prefix
	// first and last usable address of each prefix, precomputed because the
	// search in a nearly full pool steps through every address.
	first, last []netip.Addr
}

// NewPool validates prefixes (same family, canonical, non-overlapping, large
// enough to hold at least one pod) and returns a pool over them in order.
func NewPool(prefixes ...netip.Prefix) (*Pool, error) {
	if len(prefixes) == 0 {
		return nil, fmt.Errorf("%w: a pool needs at least one prefix", ErrInvalidPrefix)
	}
	for i, p := range prefixes {
		if err := ValidatePrefix(p); err != nil {
			return nil, err
		}
		if p.Addr().Is4() != prefixes[0].Addr().Is4() {
			return nil, fmt.Errorf("%w: %s and %s are of different address families", ErrInvalidPrefix, prefixes[0], p)
		}
		for _, q := range prefixes[:i] {
			if p.Overlaps(q) {
				return nil, fmt.Errorf("%w: %s overlaps %s", ErrInvalidPrefix, p, q)
			}
		}
	}
	p := &Pool{prefixes: append([]netip.Prefix(nil), prefixes...)}
	for _, q := range p.prefixes {
		p.first = append(p.first, firstUsable(q))
		p.last = append(p.last, lastUsable(q))
	}
	return p, nil
}

// ValidatePrefix reports whether p can serve as a podCIDR: a valid, canonical
// (no host bits set) prefix with room for a gateway and at least one pod.
func ValidatePrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%w: %q is not a prefix", ErrInvalidPrefix, p)
	}
	if p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return fmt.Errorf("%w: %s: use a plain IPv4 or IPv6 prefix", ErrInvalidPrefix, p)
	}
	if p.Masked() != p {
		return fmt.Errorf("%w: %s has host bits set (did you mean %s?)", ErrInvalidPrefix, p, p.Masked())
	}
	// Network + gateway (+ broadcast on IPv4) + one pod.
	maxBits := 30
	if p.Addr().Is6() {
		maxBits = 126
	}
	if p.Bits() > maxBits {
		return fmt.Errorf("%w: %s is too small: it has no address left for a pod after the network, gateway and broadcast addresses", ErrInvalidPrefix, p)
	}
	return nil
}

// Prefixes returns the pool's prefixes in allocation order.
func (p *Pool) Prefixes() []netip.Prefix { return append([]netip.Prefix(nil), p.prefixes...) }

// Is4 reports whether the pool holds IPv4 prefixes.
func (p *Pool) Is4() bool { return p.prefixes[0].Addr().Is4() }

// String lists the prefixes, e.g. "10.244.1.0/24" or "10.244.1.0/24, 10.244.2.0/24".
func (p *Pool) String() string {
	s := make([]string, len(p.prefixes))
	for i, q := range p.prefixes {
		s[i] = q.String()
	}
	return strings.Join(s, ", ")
}

// PrefixOf returns the pool prefix that contains a.
func (p *Pool) PrefixOf(a netip.Addr) (netip.Prefix, bool) {
	for _, q := range p.prefixes {
		if q.Contains(a) {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// Usable reports whether a may be given to a pod.
func (p *Pool) Usable(a netip.Addr) bool {
	for i, q := range p.prefixes {
		if q.Contains(a) {
			return !a.Less(p.first[i]) && !p.last[i].Less(a)
		}
	}
	return false
}

// Size is the number of usable addresses, saturating at math.MaxUint64.
func (p *Pool) Size() uint64 {
	var total uint64
	for _, q := range p.prefixes {
		hostBits := q.Addr().BitLen() - q.Bits()
		var n uint64
		switch {
		case hostBits >= 64:
			n = math.MaxUint64
		default:
			n = 1 << hostBits
			if q.Addr().Is4() {
				n -= 3
			} else {
				n -= 2
			}
		}
		if total > math.MaxUint64-n {
			return math.MaxUint64
		}
		total += n
	}
	return total
}

// Next returns the first address, in round-robin order starting right after
// last, for which taken reports false. Starting after the last reservation
// rather than at the bottom keeps a just-freed address out of circulation for
// as long as possible, so a new pod does not inherit traffic (conntrack
// entries, stale ARP caches, Service endpoints) meant for the old one. When
// last is not a usable address of the pool the search starts at the first
// usable address. The error wraps ErrExhausted when every address is taken,
// and is returned as is when taken fails.
func (p *Pool) Next(last netip.Addr, taken func(netip.Addr) (bool, error)) (netip.Addr, error) {
	var start netip.Addr
	if last.IsValid() && p.Usable(last) {
		start = p.after(last)
	} else {
		start = p.first[0]
	}
	a := start
	for {
		t, err := taken(a)
		if err != nil {
			return netip.Addr{}, err
		}
		if !t {
			return a, nil
		}
		a = p.after(a)
		if a == start {
			return netip.Addr{}, fmt.Errorf("%w in %s", ErrExhausted, p)
		}
	}
}

// after returns the usable address following a (which must be usable),
// moving on to the next prefix and wrapping around at the end of the pool.
func (p *Pool) after(a netip.Addr) netip.Addr {
	for i, q := range p.prefixes {
		if !q.Contains(a) {
			continue
		}
		if a != p.last[i] {
			return a.Next()
		}
		return p.first[(i+1)%len(p.prefixes)]
	}
	return p.first[0]
}

func firstUsable(q netip.Prefix) netip.Addr {
	return q.Addr().Next().Next()
}

func lastUsable(q netip.Prefix) netip.Addr {
	last := lastAddr(q)
	if q.Addr().Is4() {
		return last.Prev() // skip broadcast
	}
	return last
}

// lastAddr is the all-ones host address of q.
func lastAddr(q netip.Prefix) netip.Addr {
	b := q.Addr().As16()
	bits := q.Bits()
	if q.Addr().Is4() {
		bits += 96
	}
	for i := range b {
		lo := i * 8
		switch {
		case bits <= lo:
			b[i] = 0xff
		case bits < lo+8:
			b[i] |= 0xff >> (bits - lo)
		}
	}
	a := netip.AddrFrom16(b)
	if q.Addr().Is4() {
		return a.Unmap()
	}
	return a
}
