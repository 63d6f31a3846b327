package cninode

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/ipam"
)

func TestAllocations(t *testing.T) {
	dataDir := t.TempDir()
	// Before the plugin stored anything there is no store at all.
	got, err := Allocations(dataDir)
	if err != nil || got != nil {
		t.Fatalf("empty data dir: %v, %v; want none", got, err)
	}

	s, err := ipam.OpenDisk(filepath.Join(dataDir, cni.NetworkName))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	owner := ipam.Owner{ContainerID: "c1", IfName: "eth0"}
	addrs := []netip.Addr{netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:10:244:1::2")}
	if err := s.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := s.Reserve(owner, addrs); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}

	got, err = Allocations(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	want := []ipam.Allocation{{Addr: addrs[0], Owner: owner}, {Addr: addrs[1], Owner: owner}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Allocations (-want +got)\n%s", diff)
	}
}
