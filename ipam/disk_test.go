package ipam

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func openDisk(t *testing.T, dir string) *DiskStore {
	t.Helper()
	s, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestDiskLayout(t *testing.T) {
	dir := t.TempDir()
	m := newIPAM(t, openDisk(t, dir), "10.244.1.0/24", "fd00::/64")
	if _, err := m.Allocate(Owner{ContainerID: "abc123", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"ips/10.244.1.2":     "abc123\neth0\n",
		"ips/fd00::2":        "abc123\neth0\n",
		"owners/abc123+eth0": "10.244.1.2\nfd00::2\n",
		"last-reserved.v4":   fmt.Sprintf("%-47s\n", "10.244.1.2"),
		"last-reserved.v6":   fmt.Sprintf("%-47s\n", "fd00::2"),
	} {
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			t.Error(err)
			continue
		}
		if string(b) != want {
			t.Errorf("%s = %q, want %q", path, b, want)
		}
	}
	if _, err := OpenDisk("relative/dir"); err == nil {
		t.Error("relative store directory accepted")
	}
}

// TestDiskCrashStates builds by hand what a crash at each step of Reserve or
// Release leaves behind and checks that the next caller copes.
func TestDiskCrashStates(t *testing.T) {
	a := Owner{ContainerID: "aaa", IfName: "eth0"}
	b := Owner{ContainerID: "bbb", IfName: "eth0"}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		// wantA is what Lookup(a) and a fresh Allocate(a) must give.
		lookupA []string
		allocA  string
		// wantGC is what a GC keeping only b frees.
		wantGC []Allocation
	}{
		{
			name: "index written, record not created",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n")
			},
			allocA: "10.244.1.2",
			wantGC: []Allocation{{addr("10.244.1.2"), a}},
		},
		{
			name: "record created but empty",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n")
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "")
			},
			allocA: "10.244.1.3",
			wantGC: []Allocation{{addr("10.244.1.2"), Owner{}}, {addr("10.244.1.3"), a}},
		},
		{
			name: "record torn mid-write",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n")
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "aa")
			},
			allocA: "10.244.1.3",
			wantGC: []Allocation{{addr("10.244.1.2"), Owner{}}, {addr("10.244.1.3"), a}},
		},
		{
			name: "complete reservation survives",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n")
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "aaa\neth0\n")
			},
			lookupA: []string{"10.244.1.2"},
			allocA:  "10.244.1.2",
			wantGC:  []Allocation{{addr("10.244.1.2"), a}},
		},
		{
			name: "stale index entry now held by someone else",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n")
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "bbb\neth0\n")
				writeFile(t, filepath.Join(dir, "owners/bbb+eth0"), "10.244.1.2\n")
			},
			allocA: "10.244.1.3",
			wantGC: []Allocation{{addr("10.244.1.3"), a}},
		},
		{
			name: "record whose owner index is missing (hand edit)",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "aaa\neth0\n")
			},
			allocA: "10.244.1.3",
			wantGC: []Allocation{{addr("10.244.1.2"), a}, {addr("10.244.1.3"), a}},
		},
		{
			name: "torn index, leftover temp file and torn last-reserved",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "owners/aaa+eth0"), "10.244.1.2\n10.24")
				writeFile(t, filepath.Join(dir, "owners/.tmp.aaa+eth0"), "10.244.1.9\n")
				writeFile(t, filepath.Join(dir, "ips/10.244.1.2"), "aaa\neth0\n")
				writeFile(t, filepath.Join(dir, "last-reserved.v4"), "10.2")
			},
			lookupA: []string{"10.244.1.2"},
			allocA:  "10.244.1.2",
			wantGC:  []Allocation{{addr("10.244.1.2"), a}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openDisk(t, dir)
			tt.setup(t, dir)
			m := newIPAM(t, s, "10.244.1.0/24")
			s.Lock()
			got := mustLookup(t, s, a)
			s.Unlock()
			if diff := cmp.Diff(addrs(tt.lookupA...), got, addrOpts...); diff != "" {
				t.Errorf("Lookup (-want +got):\n%s", diff)
			}
			ls, err := m.Allocate(a)
			if err != nil {
				t.Fatal(err)
			}
			if ls[0].Addr != addr(tt.allocA) {
				t.Errorf("Allocate = %s, want %s", ls[0].Addr, tt.allocA)
			}
			freed, err := m.GC(func(o Owner) bool { return o == b })
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantGC, freed, addrOpts...); diff != "" {
				t.Errorf("GC freed (-want +got):\n%s", diff)
			}
			// After GC only b's records may remain, and a can allocate again.
			s.Lock()
			list, _ := s.List()
			s.Unlock()
			for _, r := range list {
				if r.Owner != b {
					t.Errorf("left behind: %v", r)
				}
			}
		})
	}
}

// TestDiskCrossProcess runs allocators in separate processes (this test
// binary re-executed) against one directory: only the flock keeps them from
// handing out the same address.
func TestDiskCrossProcess(t *testing.T) {
	if dir := os.Getenv("WGMESH_IPAM_HELPER_DIR"); dir != "" {
		helperAllocate(dir)
		return
	}
	const procs, each = 6, 30
	dir := t.TempDir()
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for p := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDiskCrossProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WGMESH_IPAM_HELPER_DIR="+dir,
			"WGMESH_IPAM_HELPER_ID="+strconv.Itoa(p), "WGMESH_IPAM_HELPER_N="+strconv.Itoa(each))
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		outs = append(outs, out)
	}
	seen := map[netip.Addr]string{}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
		sc := bufio.NewScanner(strings.NewReader(outs[i].String()))
		for sc.Scan() {
			owner, a, ok := strings.Cut(sc.Text(), " ")
			if !strings.HasPrefix(owner, "p") || !ok {
				continue
			}
			ip, err := netip.ParseAddr(a)
			if err != nil {
				t.Fatalf("helper %d printed %q", i, sc.Text())
			}
			if prev, dup := seen[ip]; dup {
				t.Errorf("%s given to %s and %s", ip, prev, owner)
			}
			seen[ip] = owner
		}
	}
	if len(seen) != procs*each {
		t.Errorf("%d distinct addresses, want %d", len(seen), procs*each)
	}
	s := openDisk(t, dir)
	s.Lock()
	list, _ := s.List()
	s.Unlock()
	if len(list) != procs*each {
		t.Errorf("store holds %d records, want %d", len(list), procs*each)
	}
}

func helperAllocate(dir string) {
	id, _ := strconv.Atoi(os.Getenv("WGMESH_IPAM_HELPER_ID"))
	n, _ := strconv.Atoi(os.Getenv("WGMESH_IPAM_HELPER_N"))
	s, err := OpenDisk(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	m, err := New(Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Store: s})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for i := range n {
		o := Owner{ContainerID: fmt.Sprintf("p%d-%d", id, i), IfName: "eth0"}
		ls, err := m.Allocate(o)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(o.ContainerID, ls[0].Addr)
	}
}
