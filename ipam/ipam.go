package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Config configures an IPAM.
type Config struct {
	// Prefixes are the node's podCIDRs. Prefixes of the same address family
	// form one pool, and each attachment gets one address from every pool:
	// one IPv4 and one IPv6 address on a dual-stack node.
	Prefixes []netip.Prefix
	// Store records the reservations.
	Store Store
}

// IPAM allocates pod addresses from the node's podCIDRs. It is safe for
// concurrent use as far as its Store is.
type IPAM struct {
	pools []*Pool
	keys  []string
	store Store
}

// Lease is an address held by an attachment.
type Lease struct {
	Addr netip.Addr
	// Prefix is the podCIDR the address belongs to; invalid when the address
	// lies outside the configured podCIDRs (they changed since it was given).
	Prefix netip.Prefix
	// Gateway is Prefix's gateway (the bridge address).
	Gateway netip.Addr
	// New is true when this call reserved the address, false when the
	// attachment already held it. A failed ADD must release only new leases.
	New bool
}

// Network is the address with the podCIDR's length, as the pod's interface
// carries it (e.g. 10.244.1.5/24).
func (l Lease) Network() netip.Prefix {
	return netip.PrefixFrom(l.Addr, l.Prefix.Bits())
}

// New validates cfg and builds an IPAM. It does no I/O.
func New(cfg Config) (*IPAM, error) {
	if cfg.Store == nil {
		return nil, errors.New("ipam: no store")
	}
	if len(cfg.Prefixes) == 0 {
		return nil, fmt.Errorf("%w: no podCIDRs", ErrInvalidPrefix)
	}
	var v4, v6 []netip.Prefix
	for _, p := range cfg.Prefixes {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	m := &IPAM{store: cfg.Store}
	for _, g := range []struct {
		key      string
		prefixes []netip.Prefix
	}{{"v4", v4}, {"v6", v6}} {
		if len(g.prefixes) == 0 {
			continue
		}
		pool, err := NewPool(g.prefixes...)
		if err != nil {
			return nil, err
		}
		m.pools = append(m.pools, pool)
		m.keys = append(m.keys, g.key)
	}
	// Overlap across families is impossible, within a family NewPool checked.
	return m, nil
}

// Pools returns the pools, IPv4 first.
func (m *IPAM) Pools() []*Pool { return slices.Clone(m.pools) }

func (m *IPAM) locked(f func() error) error { return locked(m.store, f) }

func locked(s Store, f func() error) (err error) {
	if err := s.Lock(); err != nil {
		return err
	}
	defer func() {
		if uerr := s.Unlock(); uerr != nil && err == nil {
			err = uerr
		}
	}()
	return f()
}

// Allocate gives owner one address from every pool. It is idempotent: an
// owner that already holds an address in a pool gets that address again
// (Lease.New false), so an ADD retried after a crash does not leak. On error
// nothing new stays reserved.
func (m *IPAM) Allocate(owner Owner) ([]Lease, error) {
	if err := owner.Validate(); err != nil {
		return nil, err
	}
	var leases []Lease
	err := m.locked(func() error {
		held, err := m.store.Lookup(owner)
		if err != nil {
			return err
		}
		var fresh []netip.Addr
		var freshKeys []string
	pools:
		for i, pool := range m.pools {
			for _, a := range held {
				if pool.Usable(a) {
					leases = append(leases, m.lease(a, false))
					continue pools
				}
			}
			last, err := m.store.LastReserved(m.keys[i])
			if err != nil {
				return err
			}
			a, err := pool.Next(last, m.taken())
			if err != nil {
				return err
			}
			fresh = append(fresh, a)
			freshKeys = append(freshKeys, m.keys[i])
			leases = append(leases, m.lease(a, true))
		}
		if len(fresh) == 0 {
			return nil
		}
		if err := m.store.Reserve(owner, fresh); err != nil {
			return err
		}
		for i, a := range fresh {
			// Only a hint for the round-robin order: a failure here must not
			// undo a good reservation.
			_ = m.store.SetLastReserved(freshKeys[i], a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return leases, nil
}

func (m *IPAM) lease(a netip.Addr, isNew bool) Lease {
	l := Lease{Addr: a, New: isNew}
	for _, pool := range m.pools {
		if p, ok := pool.PrefixOf(a); ok {
			l.Prefix = p
			// The pool's prefixes passed ValidatePrefix: each has room.
			if gw, err := nodenet.Gateway(p); err == nil {
				l.Gateway = gw.Addr()
			}
		}
	}
	return l
}

// Lookup returns the leases owner holds.
func (m *IPAM) Lookup(owner Owner) ([]Lease, error) {
	var leases []Lease
	err := m.locked(func() error {
		held, err := m.store.Lookup(owner)
		for _, a := range held {
			leases = append(leases, m.lease(a, false))
		}
		return err
	})
	return leases, err
}

// Release frees the listed addresses of owner, or all of them when none are
// listed. Unknown owners are not an error: DEL must be idempotent.
func (m *IPAM) Release(owner Owner, addrs ...netip.Addr) ([]netip.Addr, error) {
	return Release(m.store, owner, addrs...)
}

// Release is IPAM.Release for callers that have a store but no valid
// podCIDRs: freeing by owner needs no pools, so a DEL still works after the
// config went bad.
func Release(s Store, owner Owner, addrs ...netip.Addr) ([]netip.Addr, error) {
	var freed []netip.Addr
	err := locked(s, func() error {
		var err error
		freed, err = s.Release(owner, addrs...)
		return err
	})
	return freed, err
}

// GC frees every reservation whose owner keep rejects, and every record that
// cannot be read back (left by a crash). It carries on past errors and
// returns what it freed together with all errors joined.
func (m *IPAM) GC(keep func(Owner) bool) ([]Allocation, error) {
	return GC(m.store, keep)
}

// GC is IPAM.GC for callers that have a store but no valid podCIDRs.
func GC(s Store, keep func(Owner) bool) ([]Allocation, error) {
	var freed []Allocation
	err := locked(s, func() error {
		all, err := s.List()
		if err != nil {
			return err
		}
		var errs []error
		released := map[Owner]map[netip.Addr]bool{}
		for _, a := range all {
			if a.Owner != (Owner{}) && keep(a.Owner) {
				continue
			}
			if a.Owner != (Owner{}) {
				if _, ok := released[a.Owner]; !ok {
					addrs, err := s.Release(a.Owner)
					if err != nil {
						errs = append(errs, err)
					}
					released[a.Owner] = map[netip.Addr]bool{}
					for _, x := range addrs {
						released[a.Owner][x] = true
						freed = append(freed, Allocation{Addr: x, Owner: a.Owner})
					}
				}
				if released[a.Owner][a.Addr] {
					continue
				}
			}
			// Unreadable records, and records whose owner's index does not
			// list them (only a bug or a hand edit causes that), are freed
			// by address.
			if err := s.ReleaseAddr(a.Addr); err != nil {
				errs = append(errs, err)
				continue
			}
			freed = append(freed, a)
		}
		return errors.Join(errs...)
	})
	slices.SortFunc(freed, func(a, b Allocation) int { return a.Addr.Compare(b.Addr) })
	return freed, err
}

// ReservedLister is implemented by stores that can list every reserved
// address in one go more cheaply than probing a nearly full range address by
// address (DiskStore: one readdir instead of an lstat per address).
type ReservedLister interface {
	ReservedAddrs() (map[netip.Addr]bool, error)
}

// probesBeforeListing is how many single-address probes a search makes
// before it switches to a full listing. In the steady state round-robin finds
// a free address at the first probe; a search that misses this often is in a
// crowded range, where a listing is far cheaper than probing on.
const probesBeforeListing = 64

// taken returns the reservation test for one search.
func (m *IPAM) taken() func(netip.Addr) (bool, error) {
	lister, canList := m.store.(ReservedLister)
	probes := 0
	var set map[netip.Addr]bool
	return func(a netip.Addr) (bool, error) {
		if set != nil {
			return set[a], nil
		}
		probes++
		if canList && probes > probesBeforeListing {
			var err error
			if set, err = lister.ReservedAddrs(); err != nil {
				return false, err
			}
			return set[a], nil
		}
		return m.store.Reserved(a)
	}
}

// Available returns nil when every pool has a free address, else an error
// wrapping ErrExhausted that names the full pool.
func (m *IPAM) Available() error {
	return m.locked(func() error {
		for i, pool := range m.pools {
			last, err := m.store.LastReserved(m.keys[i])
			if err != nil {
				return err
			}
			if _, err := pool.Next(last, m.taken()); err != nil {
				return err
			}
		}
		return nil
	})
}
