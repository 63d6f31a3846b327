package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// stores runs a test against every Store implementation.
var stores = []struct {
	name string
	open func(t testing.TB) Store
}{
	{"mem", func(testing.TB) Store { return NewMemStore() }},
	{"disk", func(t testing.TB) Store {
		s, err := OpenDisk(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}},
}

func forEachStore(t *testing.T, f func(t *testing.T, s Store)) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			if err := s.Lock(); err != nil {
				t.Fatal(err)
			}
			defer s.Unlock()
			f(t, s)
		})
	}
}

var (
	ownerA = Owner{ContainerID: "aaaa", IfName: "eth0"}
	ownerB = Owner{ContainerID: "bbbb", IfName: "eth0"}
)

func mustLookup(t *testing.T, s Store, o Owner) []netip.Addr {
	t.Helper()
	got, err := s.Lookup(o)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestStoreReserveLookupRelease(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		if err := s.Reserve(ownerA, addrs("10.244.1.2", "fd00::2")); err != nil {
			t.Fatal(err)
		}
		if err := s.Reserve(ownerB, addrs("10.244.1.3")); err != nil {
			t.Fatal(err)
		}
		// Adding to an owner keeps what it had.
		if err := s.Reserve(ownerA, addrs("10.244.1.9")); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(addrs("10.244.1.2", "10.244.1.9", "fd00::2"), mustLookup(t, s, ownerA), addrOpts...); diff != "" {
			t.Errorf("Lookup(A) (-want +got):\n%s", diff)
		}
		for _, tc := range []struct {
			a    string
			want bool
		}{{"10.244.1.2", true}, {"10.244.1.3", true}, {"10.244.1.4", false}, {"fd00::2", true}} {
			got, err := s.Reserved(addr(tc.a))
			if err != nil || got != tc.want {
				t.Errorf("Reserved(%s) = %v, %v; want %v", tc.a, got, err, tc.want)
			}
		}
		list, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		wantList := []Allocation{
			{addr("10.244.1.2"), ownerA}, {addr("10.244.1.3"), ownerB}, {addr("10.244.1.9"), ownerA}, {addr("fd00::2"), ownerA},
		}
		if diff := cmp.Diff(wantList, list, addrOpts...); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}

		// Release of a subset, then of the rest.
		freed, err := s.Release(ownerA, addr("10.244.1.9"), addr("10.244.1.3"))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(addrs("10.244.1.9"), freed, addrOpts...); diff != "" {
			t.Errorf("Release subset freed (-want +got):\n%s", diff)
		}
		if r, _ := s.Reserved(addr("10.244.1.3")); !r {
			t.Error("releasing B's address under A's name freed it")
		}
		freed, err = s.Release(ownerA)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(addrs("10.244.1.2", "fd00::2"), freed, addrOpts...); diff != "" {
			t.Errorf("Release all freed (-want +got):\n%s", diff)
		}
		if got := mustLookup(t, s, ownerA); len(got) != 0 {
			t.Errorf("after release Lookup(A) = %v", got)
		}
		// Idempotent.
		if freed, err := s.Release(ownerA); err != nil || len(freed) != 0 {
			t.Errorf("second Release = %v, %v", freed, err)
		}
		if freed, err := s.Release(Owner{ContainerID: "never", IfName: "eth0"}); err != nil || len(freed) != 0 {
			t.Errorf("Release(unknown) = %v, %v", freed, err)
		}
		if err := s.ReleaseAddr(addr("10.244.1.3")); err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseAddr(addr("10.244.1.3")); err != nil {
			t.Fatalf("ReleaseAddr twice: %v", err)
		}
		if list, _ := s.List(); len(list) != 0 {
			t.Errorf("store not empty: %v", list)
		}
	})
}

func TestStoreReserveConflictRecordsNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		if err := s.Reserve(ownerB, addrs("10.244.1.3")); err != nil {
			t.Fatal(err)
		}
		err := s.Reserve(ownerA, addrs("10.244.1.2", "10.244.1.3"))
		if !errors.Is(err, ErrReserved) {
			t.Fatalf("err = %v, want ErrReserved", err)
		}
		if r, _ := s.Reserved(addr("10.244.1.2")); r {
			t.Error("failed Reserve left 10.244.1.2 reserved")
		}
		if got := mustLookup(t, s, ownerA); len(got) != 0 {
			t.Errorf("Lookup(A) = %v after failed Reserve", got)
		}
		if diff := cmp.Diff(addrs("10.244.1.3"), mustLookup(t, s, ownerB), addrOpts...); diff != "" {
			t.Errorf("B lost its address (-want +got):\n%s", diff)
		}
	})
}

func TestStoreRejectsBadOwners(t *testing.T) {
	bad := []Owner{
		{},
		{ContainerID: "abc"},
		{IfName: "eth0"},
		{ContainerID: "../etc", IfName: "eth0"},
		{ContainerID: "a/b", IfName: "eth0"},
		{ContainerID: "a+b", IfName: "eth0"},
		{ContainerID: ".hidden", IfName: "eth0"},
		{ContainerID: "abc", IfName: "../x"},
		{ContainerID: "abc", IfName: ".."},
		{ContainerID: "abc", IfName: "a\nb"},
	}
	forEachStore(t, func(t *testing.T, s Store) {
		for _, o := range bad {
			if err := s.Reserve(o, addrs("10.244.1.2")); !errors.Is(err, ErrInvalidOwner) {
				t.Errorf("Reserve(%q) = %v, want ErrInvalidOwner", o, err)
			}
		}
		if list, _ := s.List(); len(list) != 0 {
			t.Errorf("bad owners left records: %v", list)
		}
	})
}

func TestStoreLastReserved(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		got, err := s.LastReserved("v4")
		if err != nil || got.IsValid() {
			t.Fatalf("fresh LastReserved = %v, %v", got, err)
		}
		for _, kv := range [][2]string{{"v4", "10.244.1.7"}, {"v6", "fd00::9"}, {"v4", "10.244.1.8"}} {
			if err := s.SetLastReserved(kv[0], addr(kv[1])); err != nil {
				t.Fatal(err)
			}
		}
		if got, _ := s.LastReserved("v4"); got != addr("10.244.1.8") {
			t.Errorf("v4 = %s", got)
		}
		if got, _ := s.LastReserved("v6"); got != addr("fd00::9") {
			t.Errorf("v6 = %s", got)
		}
	})
}
