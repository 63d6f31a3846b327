package ipam

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// MemStore is a map-backed Store for tests. Its lock is a mutex, so it
// serialises goroutines of one process only.
type MemStore struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]Owner
	byOwner map[Owner][]netip.Addr
	last    map[string]netip.Addr
	// Corrupt simulates unreadable records (a crash mid-write): addresses
	// listed here are reserved but have no owner.
	corrupt map[netip.Addr]bool
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{addrs: map[netip.Addr]Owner{}, byOwner: map[Owner][]netip.Addr{}, last: map[string]netip.Addr{}, corrupt: map[netip.Addr]bool{}}
}

func (s *MemStore) Lock() error   { s.mu.Lock(); return nil }
func (s *MemStore) Unlock() error { s.mu.Unlock(); return nil }
func (s *MemStore) Close() error  { return nil }

// AddCorrupt records a reservation without an owner, as a crash between
// creating and writing a DiskStore record leaves behind.
func (s *MemStore) AddCorrupt(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corrupt[a] = true
}

func (s *MemStore) Reserved(a netip.Addr) (bool, error) {
	_, ok := s.addrs[a]
	return ok || s.corrupt[a], nil
}

func (s *MemStore) Reserve(owner Owner, addrs []netip.Addr) error {
	if err := owner.Validate(); err != nil {
		return err
	}
	for _, a := range addrs {
		if r, _ := s.Reserved(a); r {
			return fmt.Errorf("%w: %s", ErrReserved, a)
		}
	}
	for _, a := range addrs {
		s.addrs[a] = owner
		s.byOwner[owner] = append(s.byOwner[owner], a)
	}
	return nil
}

func (s *MemStore) Lookup(owner Owner) ([]netip.Addr, error) {
	out := slices.Clone(s.byOwner[owner])
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func (s *MemStore) Release(owner Owner, addrs ...netip.Addr) ([]netip.Addr, error) {
	held, _ := s.Lookup(owner)
	var freed, kept []netip.Addr
	for _, a := range held {
		if len(addrs) == 0 || slices.Contains(addrs, a) {
			delete(s.addrs, a)
			freed = append(freed, a)
		} else {
			kept = append(kept, a)
		}
	}
	if len(kept) == 0 {
		delete(s.byOwner, owner)
	} else {
		s.byOwner[owner] = kept
	}
	return freed, nil
}

func (s *MemStore) ReleaseAddr(a netip.Addr) error {
	if o, ok := s.addrs[a]; ok {
		s.byOwner[o] = slices.DeleteFunc(s.byOwner[o], func(x netip.Addr) bool { return x == a })
	}
	delete(s.addrs, a)
	delete(s.corrupt, a)
	return nil
}

func (s *MemStore) List() ([]Allocation, error) {
	var out []Allocation
	for a, o := range s.addrs {
		out = append(out, Allocation{Addr: a, Owner: o})
	}
	for a := range s.corrupt {
		out = append(out, Allocation{Addr: a})
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out, nil
}

func (s *MemStore) LastReserved(key string) (netip.Addr, error) { return s.last[key], nil }

func (s *MemStore) SetLastReserved(key string, a netip.Addr) error {
	s.last[key] = a
	return nil
}
