package wgdev

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// contents lists the set's addresses, sorted, and checks that every one of
// them is reachable from its home slot without crossing an empty one (what
// remove's back-shift must keep true).
func (s *addrSet) contents(t *testing.T) []uintptr {
	t.Helper()
	var out []uintptr
	mask := len(s.slots) - 1
	for i, a := range s.slots {
		if a == 0 {
			continue
		}
		out = append(out, a)
		for j := s.home(a); j != i; j = (j + 1) & mask {
			if s.slots[j] == 0 {
				t.Fatalf("address %#x in slot %d is cut off from its home %d by the empty slot %d", a, i, s.home(a), j)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestAddrSetAgainstMap(t *testing.T) {
	tests := []struct {
		name  string
		hint  int
		pool  int     // distinct addresses drawn from
		ops   int     // operations
		adds  float64 // share of adds
		clear int     // clear every this many operations (0: never)
		align uintptr // spacing of the addresses
	}{
		{"bound-sized, 64 KiB buffers", 256, 600, 20000, 0.5, 0, 65536},
		{"small set, heavy collisions", 4, 64, 20000, 0.5, 0, 8},
		{"mostly adds: grows", 16, 5000, 20000, 0.8, 0, 4096},
		{"mostly removes of absent ones", 16, 200, 20000, 0.2, 0, 65536},
		{"stalls clear it", 32, 300, 20000, 0.6, 997, 65536},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.pool)))
			s := newAddrSet(tc.hint)
			want := map[uintptr]struct{}{}
			base := uintptr(0xc000000000)
			for op := 1; op <= tc.ops; op++ {
				a := base + uintptr(rng.IntN(tc.pool))*tc.align
				if rng.Float64() < tc.adds {
					s.add(a)
					want[a] = struct{}{}
				} else {
					_, had := want[a]
					delete(want, a)
					if got := s.remove(a); got != had {
						t.Fatalf("op %d: remove(%#x) = %v, want %v", op, a, got, had)
					}
				}
				if tc.clear > 0 && op%tc.clear == 0 {
					s.clear()
					clear(want)
				}
				if s.len() != len(want) {
					t.Fatalf("op %d: len %d, want %d", op, s.len(), len(want))
				}
				if op%500 == 0 || op == tc.ops {
					w := make([]uintptr, 0, len(want))
					for a := range want {
						w = append(w, a)
					}
					slices.Sort(w)
					if diff := cmp.Diff(w, s.contents(t)); diff != "" {
						t.Fatalf("op %d: set differs from the map (-want +got):\n%s", op, diff)
					}
				}
			}
			if 2*s.len() > len(s.slots) {
				t.Errorf("%d addresses in %d slots: more than half full", s.len(), len(s.slots))
			}
		})
	}
}

// batchAddrs are the addresses of one GSO read's segments (45 × 64 KiB
// buffers), the unit hold and release work on.
func batchAddrs(n int) []uintptr {
	out := make([]uintptr, n)
	for i := range out {
		out[i] = 0xc000400000 + uintptr(i)*65536*3
	}
	return out
}

// BenchmarkHeldSet compares the set with the map it replaced, for one batch
// added and removed with the bound half full of other buffers:
// go test ./mesh/wgdev -run XXX -bench HeldSet -benchmem
func BenchmarkHeldSet(b *testing.B) {
	batch := batchAddrs(45)
	others := batchAddrs(128 + 45)[45:]
	b.Run("map", func(b *testing.B) {
		m := make(map[uintptr]struct{}, 256)
		for _, a := range others {
			m[a] = struct{}{}
		}
		for b.Loop() {
			for _, a := range batch {
				m[a] = struct{}{}
			}
			for _, a := range batch {
				delete(m, a)
			}
		}
	})
	b.Run("addrSet", func(b *testing.B) {
		s := newAddrSet(256)
		for _, a := range others {
			s.add(a)
		}
		for b.Loop() {
			for _, a := range batch {
				s.add(a)
			}
			for _, a := range batch {
				s.remove(a)
			}
		}
	})
}
