package ipam

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkAllocateNearlyFull16 measures one Allocate+Release cycle in a /16
// where only a handful of addresses are free. Every cycle releases the
// address it just took, and round-robin then starts the next search right
// after it, so each search walks almost the whole range before it finds a
// free slot: this is the worst case, not the steady state.
func BenchmarkAllocateNearlyFull16(b *testing.B) {
	const free = 4
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			m := newIPAM(b, s, "10.244.0.0/16")
			fill(b, s, pfx("10.244.0.0/16"), free)
			o := Owner{ContainerID: "bench", IfName: "eth0"}
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Allocate(o); err != nil {
					b.Fatal(err)
				}
				if _, err := m.Release(o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllocateSteadyState measures Allocate+Release in a half-full /16:
// the common case, where the address after the last one handed out is free.
func BenchmarkAllocateSteadyState(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			s := st.open(b)
			m := newIPAM(b, s, "10.244.0.0/16")
			fill(b, s, pfx("10.244.0.0/17"), 0)
			i := 0
			for b.Loop() {
				o := Owner{ContainerID: fmt.Sprintf("bench%d", i), IfName: "eth0"}
				i++
				if _, err := m.Allocate(o); err != nil {
					b.Fatal(err)
				}
				if _, err := m.Release(o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// fill reserves every usable address of p except the last `leave` ones.
func fill(b *testing.B, s Store, p netip.Prefix, leave int) {
	b.Helper()
	pool, err := NewPool(p)
	if err != nil {
		b.Fatal(err)
	}
	n := int(pool.Size()) - leave
	s.Lock()
	defer s.Unlock()
	a := firstUsable(p)
	for i := range n {
		if err := s.Reserve(Owner{ContainerID: fmt.Sprintf("fill%d", i), IfName: "eth0"}, []netip.Addr{a}); err != nil {
			b.Fatal(err)
		}
		a = a.Next()
	}
	if err := s.SetLastReserved("v4", a.Prev()); err != nil {
		b.Fatal(err)
	}
}
