package ipam

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzDiskStoreRead plants arbitrary bytes where the disk store keeps its
// state (two address records, an owner index, the round-robin position and
// a stray directory entry), as a crash, a torn write or a hand edit could
// leave them, then drives every reading path. Whatever is on disk, the
// store must not panic, must only report an address as someone's when its
// record says so, must keep allocating from free addresses, and GC must be
// able to clean everything up. Seeds are in testdata/fuzz/FuzzDiskStoreRead.
func FuzzDiskStoreRead(f *testing.F) {
	f.Add([]byte("c1\neth0\n"), []byte("c2\neth0\n"), []byte("10.244.1.2\n10.244.1.3\n"), []byte("10.244.1.3                                     \n"), "junk")
	f.Add([]byte(""), []byte("c1\neth0"), []byte("10.244.1.2\n10.244.1.2\n::ffff:10.244.1.3\n"), []byte("garbage"), "10.244.1.9")
	f.Add([]byte("c1\neth0\nextra\n"), []byte("c1\neth0\n"), []byte("\n\n 10.244.1.3\n10.244.1.3"), []byte(""), ".tmp.x")
	f.Add([]byte("c1\neth0\n"), []byte("c1\neth0\n"), []byte("10.244.1.2\n10.244.1.3\n10.244.1.2\n"), []byte("10.244.1.3"), "")
	f.Add([]byte("../x\neth0\n"), []byte("c1\n\x00\n"), []byte("10.244.1.255\n"), []byte("10.244.1.14"), "fe80::1")
	// One directory for all runs, emptied before each, on tmpfs when there
	// is one: on ext4 every rename over an index flushes it to disk, which
	// made runs a hundred times slower. Durability is not under test here.
	base := f.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "wgmesh-ipam-fuzz-"); err == nil {
		base = d
		f.Cleanup(func() { os.RemoveAll(d) })
	}
	f.Fuzz(func(t *testing.T, rec2, rec3, index, last []byte, stray string) {
		dir := filepath.Join(base, "store")
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		s, err := OpenDisk(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		a2, a3 := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.244.1.3")
		c1 := Owner{ContainerID: "c1", IfName: "eth0"}
		plant := func(path string, b []byte) {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		plant(s.addrPath(a2), rec2)
		plant(s.addrPath(a3), rec3)
		plant(s.ownerPath(c1), index)
		plant(s.lastPath("v4"), last)
		if stray != "" && !strings.ContainsAny(stray, "/\x00") && stray != "." && stray != ".." && len(stray) < 200 {
			plant(filepath.Join(dir, "ips", stray), []byte("c9\neth0\n"))
		}

		m, err := New(Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/28")}, Store: s})
		if err != nil {
			t.Fatal(err)
		}
		var list []Allocation
		var held []netip.Addr
		err = locked(s, func() error {
			var err error
			if list, err = s.List(); err != nil {
				return err
			}
			held, err = s.Lookup(c1)
			return err
		})
		if err != nil {
			t.Fatalf("reading the store: %v", err)
		}
		owner := map[netip.Addr]Owner{}
		for _, a := range list {
			if a.Owner != (Owner{}) && a.Owner.Validate() != nil {
				t.Fatalf("List reports an invalid owner %q for %s", a.Owner, a.Addr)
			}
			owner[a.Addr] = a.Owner
		}
		for _, a := range []netip.Addr{a2, a3} {
			if _, ok := owner[a]; !ok {
				t.Fatalf("List lacks %s", a)
			}
		}
		uniq := slices.Clone(held)
		slices.SortFunc(uniq, netip.Addr.Compare)
		if len(slices.Compact(uniq)) != len(held) {
			t.Fatalf("Lookup returns duplicates: %v", held)
		}
		for _, a := range held {
			if owner[a] != c1 {
				t.Fatalf("Lookup gives c1 %s, whose record names %q", a, owner[a])
			}
		}

		// Allocation keeps working: c1 gets what it holds (if usable) or a
		// free address; a new owner gets a free address.
		leases, err := m.Allocate(c1)
		if err != nil {
			t.Fatalf("Allocate(c1): %v", err)
		}
		if len(leases) != 1 {
			t.Fatalf("leases %+v", leases)
		}
		inList := func(a netip.Addr) bool { _, ok := owner[a]; return ok }
		if l := leases[0]; !l.New && !slices.Contains(held, l.Addr) || l.New && inList(l.Addr) {
			t.Fatalf("c1 got %+v; it held %v, store had %v", l, held, list)
		}
		c2 := Owner{ContainerID: "c2x", IfName: "eth1"}
		l2, err := m.Allocate(c2)
		if err != nil {
			t.Fatalf("Allocate(c2x): %v", err)
		}
		if l2[0].Addr == leases[0].Addr || !l2[0].New || inList(l2[0].Addr) {
			t.Fatalf("c2x got %+v, taken already (c1 %+v, store %v)", l2[0], leases[0], list)
		}
		if err := m.Available(); err != nil {
			t.Fatalf("Available: %v", err)
		}

		// GC of everything leaves an empty store.
		if _, err := m.GC(func(Owner) bool { return false }); err != nil {
			t.Fatalf("GC: %v", err)
		}
		var rest []Allocation
		var set map[netip.Addr]bool
		err = locked(s, func() error {
			var err error
			if rest, err = s.List(); err != nil {
				return err
			}
			set, err = s.ReservedAddrs()
			return err
		})
		if err != nil || len(rest) != 0 || len(set) != 0 {
			t.Fatalf("after GC: %v, %v, %v", rest, set, err)
		}
	})
}
