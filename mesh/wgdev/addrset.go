package wgdev

import "math/bits"

// addrSet is the set of buffer addresses the in-flight bound holds.
//
// It replaces a map[uintptr]struct{}: every data packet is added once and
// removed once, under the bound's mutex, and in a perf profile of a lab
// agent carrying one TCP stream the map's assign and delete took 1.9-2.2% of
// each daemon's samples (docs/benchmarks.md, issue 15 round 6). Here an add
// or a remove is a multiply, a shift and, at the fill kept below half, one
// or two probes: open addressing with linear probing, and deletion by
// shifting the following entries back (no tombstones, so a long run of adds
// and removes never degrades the probes).
type addrSet struct {
	slots []uintptr // 0: empty; no buffer starts at address 0
	n     int
	shift uint // 64 - log2(len(slots))
}

// addrSetMinSlots keeps a set for a small bound (tests) from growing at once.
const addrSetMinSlots = 16

// newAddrSet returns a set that holds hint addresses without growing.
func newAddrSet(hint int) addrSet {
	size := addrSetMinSlots
	for size < 2*hint {
		size *= 2
	}
	return addrSet{slots: make([]uintptr, size), shift: uint(64 - bits.TrailingZeros(uint(size)))}
}

// home is a's first slot. Buffers are separate 64 KiB allocations, so their
// low bits carry little; the multiplicative (Fibonacci) hash takes its top
// bits, which every bit of the address feeds.
func (s *addrSet) home(a uintptr) int {
	return int((uint64(a) * 0x9e3779b97f4a7c15) >> s.shift)
}

// len is the number of addresses in the set.
func (s *addrSet) len() int { return s.n }

// add puts a in the set; adding an address already there changes nothing.
func (s *addrSet) add(a uintptr) {
	if 2*(s.n+1) > len(s.slots) {
		s.grow()
	}
	mask := len(s.slots) - 1
	for i := s.home(a); ; i = (i + 1) & mask {
		switch s.slots[i] {
		case 0:
			s.slots[i] = a
			s.n++
			return
		case a:
			return
		}
	}
}

// remove takes a out of the set and says whether it was there.
func (s *addrSet) remove(a uintptr) bool {
	mask := len(s.slots) - 1
	i := s.home(a)
	for ; s.slots[i] != a; i = (i + 1) & mask {
		if s.slots[i] == 0 {
			return false
		}
	}
	// Close the gap: each following entry of the run moves into it unless
	// its home lies cyclically in (i, j], where the probe from its home
	// still reaches it without passing the gap.
	for j := i; ; {
		j = (j + 1) & mask
		v := s.slots[j]
		if v == 0 {
			break
		}
		h := s.home(v)
		if (i < j && i < h && h <= j) || (i > j && (h > i || h <= j)) {
			continue
		}
		s.slots[i] = v
		i = j
	}
	s.slots[i] = 0
	s.n--
	return true
}

// clear empties the set, keeping its size.
func (s *addrSet) clear() {
	clear(s.slots)
	s.n = 0
}

// grow doubles the slots. The bound keeps the set near its limit, so this
// happens only when addresses pile up between stalls (buffers dropped
// inside wireguard-go and then freed by its pool).
func (s *addrSet) grow() {
	old := s.slots
	*s = addrSet{slots: make([]uintptr, 2*len(old)), shift: s.shift - 1}
	for _, a := range old {
		if a != 0 {
			s.add(a)
		}
	}
}
