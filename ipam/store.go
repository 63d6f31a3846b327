package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

var (
	// ErrReserved means an address is already held by someone.
	ErrReserved = errors.New("address already reserved")
	// ErrInvalidOwner means an owner cannot be recorded (empty or unsafe
	// container ID or interface name).
	ErrInvalidOwner = errors.New("invalid owner")
)

// Owner identifies a CNI attachment: the (CNI_CONTAINERID, CNI_IFNAME) pair.
type Owner struct {
	ContainerID string
	IfName      string
}

func (o Owner) String() string { return o.ContainerID + "/" + o.IfName }

// Validate rejects owners a store could not record faithfully. The rules are
// a little looser than the CNI spec's (which the runtime enforces) but
// guarantee the pair can be used in a file name and split back unambiguously.
func (o Owner) Validate() error {
	switch {
	case o.ContainerID == "" || o.IfName == "":
		return fmt.Errorf("%w: %q: container ID and interface name are required", ErrInvalidOwner, o)
	case len(o.ContainerID) > 200 || len(o.IfName) > 50:
		return fmt.Errorf("%w: %q: too long", ErrInvalidOwner, o)
	case strings.ContainsAny(o.ContainerID, "/+\n\x00") || strings.HasPrefix(o.ContainerID, "."):
		return fmt.Errorf("%w: container ID %q contains '/', '+', a newline or NUL, or starts with '.'", ErrInvalidOwner, o.ContainerID)
	case strings.ContainsAny(o.IfName, "/\n\x00") || o.IfName == "." || o.IfName == "..":
		return fmt.Errorf("%w: interface name %q", ErrInvalidOwner, o.IfName)
	}
	return nil
}

// Allocation is one reserved address and who holds it. Owner is the zero
// value when the record cannot be read back (a crash while it was being
// written); such records are only ever cleaned up by GC.
type Allocation struct {
	Addr  netip.Addr
	Owner Owner
}

// Store records reservations. It is host-local's store split out so the
// allocation logic can be tested against a map: DiskStore is the real one,
// MemStore the test double.
//
// Every method other than Lock, Unlock and Close must be called with the lock
// held; the lock serialises all users of the same store, in this process and
// (for DiskStore) in every other process.
type Store interface {
	Lock() error
	Unlock() error
	Close() error

	// Reserved reports whether anyone holds a.
	Reserved(a netip.Addr) (bool, error)
	// Reserve records that owner holds addrs, in addition to what it holds
	// already. If one of addrs is held by anyone the call fails with an
	// error wrapping ErrReserved and records none of them.
	Reserve(owner Owner, addrs []netip.Addr) error
	// Lookup returns the addresses owner holds (none for an unknown owner).
	Lookup(owner Owner) ([]netip.Addr, error)
	// Release frees the listed addresses if owner holds them, or every
	// address it holds when none are listed, and returns what it freed.
	// Releasing for an unknown owner is not an error.
	Release(owner Owner, addrs ...netip.Addr) ([]netip.Addr, error)
	// ReleaseAddr frees a whoever holds it, including unreadable records.
	ReleaseAddr(a netip.Addr) error
	// List returns every reservation, ordered by address.
	List() ([]Allocation, error)

	// LastReserved returns the last address handed out from the pool named
	// key, or the zero Addr when there is none.
	LastReserved(key string) (netip.Addr, error)
	SetLastReserved(key string, a netip.Addr) error
}
