package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func newIPAM(t testing.TB, s Store, prefixes ...string) *IPAM {
	t.Helper()
	var ps []netip.Prefix
	for _, p := range prefixes {
		ps = append(ps, pfx(p))
	}
	m, err := New(Config{Prefixes: ps, Store: s})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func owner(i int) Owner { return Owner{ContainerID: fmt.Sprintf("c%04d", i), IfName: "eth0"} }

func leaseAddrs(ls []Lease) []netip.Addr {
	var out []netip.Addr
	for _, l := range ls {
		out = append(out, l.Addr)
	}
	return out
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Config{Prefixes: []netip.Prefix{pfx("10.244.1.0/24")}}); err == nil {
		t.Error("no store accepted")
	}
	if _, err := New(Config{Store: NewMemStore()}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("no prefixes: %v", err)
	}
	if _, err := New(Config{Store: NewMemStore(), Prefixes: []netip.Prefix{pfx("10.244.1.0/24"), pfx("10.244.1.128/25")}}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("overlap: %v", err)
	}
}

func TestAllocateDualStack(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			m := newIPAM(t, st.open(t), "fd00:10:244:1::/64", "10.244.1.0/24")
			got, err := m.Allocate(owner(1))
			if err != nil {
				t.Fatal(err)
			}
			want := []Lease{
				{Addr: addr("10.244.1.2"), Prefix: pfx("10.244.1.0/24"), Gateway: addr("10.244.1.1"), New: true},
				{Addr: addr("fd00:10:244:1::2"), Prefix: pfx("fd00:10:244:1::/64"), Gateway: addr("fd00:10:244:1::1"), New: true},
			}
			if diff := cmp.Diff(want, got, addrOpts...); diff != "" {
				t.Fatalf("leases (-want +got):\n%s", diff)
			}
			if got[0].Network() != pfx("10.244.1.2/24") {
				t.Errorf("Network() = %s", got[0].Network())
			}
			// Same attachment again: same addresses, not new.
			again, err := m.Allocate(owner(1))
			if err != nil {
				t.Fatal(err)
			}
			for i := range want {
				want[i].New = false
			}
			if diff := cmp.Diff(want, again, addrOpts...); diff != "" {
				t.Errorf("idempotent ADD (-want +got):\n%s", diff)
			}
			// Same container, another interface: other addresses.
			other, err := m.Allocate(Owner{ContainerID: owner(1).ContainerID, IfName: "net1"})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(addrs("10.244.1.3", "fd00:10:244:1::3"), leaseAddrs(other), addrOpts...); diff != "" {
				t.Errorf("second interface (-want +got):\n%s", diff)
			}
			looked, err := m.Lookup(owner(1))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, looked, addrOpts...); diff != "" {
				t.Errorf("Lookup (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllocateCompletesPartialReservation(t *testing.T) {
	// A crash (or a podCIDR added later) can leave an attachment holding
	// only one family: the next ADD keeps that address and adds the other.
	s := NewMemStore()
	m := newIPAM(t, s, "10.244.1.0/24", "fd00::/64")
	s.Lock()
	if err := s.Reserve(owner(1), addrs("fd00::7")); err != nil {
		t.Fatal(err)
	}
	s.Unlock()
	got, err := m.Allocate(owner(1))
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{
		{Addr: addr("10.244.1.2"), Prefix: pfx("10.244.1.0/24"), Gateway: addr("10.244.1.1"), New: true},
		{Addr: addr("fd00::7"), Prefix: pfx("fd00::/64"), Gateway: addr("fd00::1"), New: false},
	}
	if diff := cmp.Diff(want, got, addrOpts...); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestAllocateExhaustion(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			m := newIPAM(t, s, "10.244.1.0/29", "fd00::/120")
			for i := range 5 {
				if _, err := m.Allocate(owner(i)); err != nil {
					t.Fatalf("allocation %d: %v", i, err)
				}
			}
			_, err := m.Allocate(owner(99))
			if !errors.Is(err, ErrExhausted) {
				t.Fatalf("err = %v, want ErrExhausted", err)
			}
			if !strings.Contains(err.Error(), "no free address in 10.244.1.0/29") {
				t.Errorf("message %q does not name the range", err)
			}
			// The IPv6 pool had room, but nothing may stay reserved.
			if got, _ := m.Lookup(owner(99)); len(got) != 0 {
				t.Errorf("failed allocation left %v", got)
			}
			if err := m.Available(); !errors.Is(err, ErrExhausted) {
				t.Errorf("Available() = %v, want ErrExhausted", err)
			}
			if _, err := m.Release(owner(2)); err != nil {
				t.Fatal(err)
			}
			if err := m.Available(); err != nil {
				t.Errorf("Available() after release = %v", err)
			}
			got, err := m.Allocate(owner(99))
			if err != nil {
				t.Fatal(err)
			}
			if got[0].Addr != addr("10.244.1.4") {
				t.Errorf("got %s, want the freed 10.244.1.4", got[0].Addr)
			}
		})
	}
}

func TestAllocateRoundRobin(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			m := newIPAM(t, st.open(t), "10.244.1.0/29")
			var got []netip.Addr
			alloc := func(i int) {
				t.Helper()
				l, err := m.Allocate(owner(i))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, l[0].Addr)
			}
			alloc(1) // .2
			alloc(2) // .3
			alloc(3) // .4
			if _, err := m.Release(owner(1)); err != nil {
				t.Fatal(err)
			}
			alloc(4) // .5: the freed .2 is not reused at once
			alloc(5) // .6
			alloc(6) // wraps to the freed .2
			if diff := cmp.Diff(addrs("10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6", "10.244.1.2"), got, addrOpts...); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReleaseOnlyListed(t *testing.T) {
	m := newIPAM(t, NewMemStore(), "10.244.1.0/24", "fd00::/64")
	ls, err := m.Allocate(owner(1))
	if err != nil {
		t.Fatal(err)
	}
	freed, err := m.Release(owner(1), ls[1].Addr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(addrs("fd00::2"), freed, addrOpts...); diff != "" {
		t.Errorf("freed (-want +got):\n%s", diff)
	}
	left, _ := m.Lookup(owner(1))
	if diff := cmp.Diff(addrs("10.244.1.2"), leaseAddrs(left), addrOpts...); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
}

func TestGC(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			m := newIPAM(t, s, "10.244.1.0/24", "fd00::/64")
			for i := range 4 {
				if _, err := m.Allocate(owner(i)); err != nil {
					t.Fatal(err)
				}
			}
			// A record whose content never got written (crash mid-ADD).
			switch s := s.(type) {
			case *MemStore:
				s.AddCorrupt(addr("10.244.1.200"))
			case *DiskStore:
				writeFile(t, s.addrPath(addr("10.244.1.200")), "")
			}
			keep := map[Owner]bool{owner(1): true, owner(3): true, {ContainerID: "gone", IfName: "eth0"}: true}
			freed, err := m.GC(func(o Owner) bool { return keep[o] })
			if err != nil {
				t.Fatal(err)
			}
			want := []Allocation{
				{addr("10.244.1.2"), owner(0)},
				{addr("10.244.1.4"), owner(2)},
				{addr("10.244.1.200"), Owner{}},
				{addr("fd00::2"), owner(0)},
				{addr("fd00::4"), owner(2)},
			}
			if diff := cmp.Diff(want, freed, addrOpts...); diff != "" {
				t.Errorf("freed (-want +got):\n%s", diff)
			}
			s.Lock()
			list, _ := s.List()
			s.Unlock()
			wantList := []Allocation{
				{addr("10.244.1.3"), owner(1)}, {addr("10.244.1.5"), owner(3)},
				{addr("fd00::3"), owner(1)}, {addr("fd00::5"), owner(3)},
			}
			if diff := cmp.Diff(wantList, list, addrOpts...); diff != "" {
				t.Errorf("left (-want +got):\n%s", diff)
			}
			// Nothing valid left to collect.
			if freed, err := m.GC(func(o Owner) bool { return keep[o] }); err != nil || len(freed) != 0 {
				t.Errorf("second GC = %v, %v", freed, err)
			}
		})
	}
}

// TestConcurrentAllocate hammers one range from many goroutines. For the
// disk store every goroutine opens its own DiskStore (its own descriptor),
// so the flock, not the in-process mutex, is what keeps them apart.
func TestConcurrentAllocate(t *testing.T) {
	const n = 120
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			shared := st.open(t)
			var dir string
			if d, ok := shared.(*DiskStore); ok {
				dir = d.Dir()
			}
			var wg sync.WaitGroup
			results := make([][]Lease, n)
			errs := make([]error, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := shared
					if dir != "" {
						d, err := OpenDisk(dir)
						if err != nil {
							errs[i] = err
							return
						}
						defer d.Close()
						s = d
					}
					m, err := New(Config{Prefixes: []netip.Prefix{pfx("10.244.1.0/25"), pfx("fd00::/64")}, Store: s})
					if err != nil {
						errs[i] = err
						return
					}
					// Twice: the second must be the idempotent no-op.
					if _, err := m.Allocate(owner(i)); err != nil {
						errs[i] = err
						return
					}
					results[i], errs[i] = m.Allocate(owner(i))
				}()
			}
			wg.Wait()
			seen := map[netip.Addr]int{}
			exhausted := 0
			for i := range n {
				if errors.Is(errs[i], ErrExhausted) {
					exhausted++
					continue
				}
				if errs[i] != nil {
					t.Fatalf("goroutine %d: %v", i, errs[i])
				}
				for _, l := range results[i] {
					if l.New {
						t.Errorf("goroutine %d: second Allocate returned a new lease %s", i, l.Addr)
					}
					if j, dup := seen[l.Addr]; dup {
						t.Errorf("%s given to %d and %d", l.Addr, j, i)
					}
					seen[l.Addr] = i
				}
			}
			// /25 has 125 usable addresses: everyone fits.
			if exhausted != 0 || len(seen) != 2*n {
				t.Errorf("%d exhausted, %d distinct addresses; want 0 and %d", exhausted, len(seen), 2*n)
			}
			shared.Lock()
			list, _ := shared.List()
			shared.Unlock()
			if len(list) != 2*n {
				t.Errorf("store holds %d records, want %d", len(list), 2*n)
			}
		})
	}
}
