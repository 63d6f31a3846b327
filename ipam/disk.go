package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// DiskStore is the Store the plugin uses: a directory shared by every plugin
// process on the node.
//
//	lock                      flock(2) target serialising all processes
//	ips/<addr>                one file per reserved address, created with
//	                          O_EXCL; content "<containerID>\n<ifname>\n"
//	owners/<containerID>+<ifname>
//	                          index: the addresses the attachment holds,
//	                          one per line
//	last-reserved.<pool>      round-robin position
//
// The address files are the truth; the owner index only makes Lookup and
// Release O(1) instead of reading every record. Writes are ordered so that a
// crash at any point leaves a state the next caller handles:
//   - Reserve rewrites the index (atomically, by rename) before it creates
//     the address files, so every address file is listed in its owner's
//     index. Index entries whose file is missing or names someone else are
//     ignored, so a crash between the two steps costs nothing.
//   - A crash between creating an address file and writing its content
//     leaves an empty record: it blocks that address but has no owner, and
//     GC frees it.
//   - Release removes address files before it rewrites the index.
type DiskStore struct {
	dir  string
	mu   sync.Mutex // flock does not exclude goroutines sharing one descriptor
	lock *os.File
}

var (
	_ Store          = (*DiskStore)(nil)
	_ ReservedLister = (*DiskStore)(nil)
)

// OpenDisk opens (creating it if needed) the store in dir.
func OpenDisk(dir string) (*DiskStore, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("ipam: store directory %q is not absolute", dir)
	}
	for _, d := range []string{dir, filepath.Join(dir, "ips"), filepath.Join(dir, "owners")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("ipam: create store directory: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam: open store lock: %w", err)
	}
	return &DiskStore{dir: dir, lock: f}, nil
}

// Dir returns the store's directory.
func (s *DiskStore) Dir() string { return s.dir }

func (s *DiskStore) Lock() error {
	s.mu.Lock()
	for {
		err := syscall.Flock(int(s.lock.Fd()), syscall.LOCK_EX)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EINTR) {
			s.mu.Unlock()
			return fmt.Errorf("ipam: lock store: %w", err)
		}
	}
}

func (s *DiskStore) Unlock() error {
	defer s.mu.Unlock()
	if err := syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN); err != nil {
		return fmt.Errorf("ipam: unlock store: %w", err)
	}
	return nil
}

func (s *DiskStore) Close() error { return s.lock.Close() }

func (s *DiskStore) addrPath(a netip.Addr) string { return filepath.Join(s.dir, "ips", a.String()) }

func (s *DiskStore) ownerPath(o Owner) string {
	// '+' cannot occur in a valid container ID, so the name splits uniquely.
	return filepath.Join(s.dir, "owners", o.ContainerID+"+"+o.IfName)
}

func (s *DiskStore) Reserved(a netip.Addr) (bool, error) {
	_, err := os.Lstat(s.addrPath(a))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("ipam: %w", err)
	}
}

func (s *DiskStore) Reserve(owner Owner, addrs []netip.Addr) error {
	if err := owner.Validate(); err != nil {
		return err
	}
	held, err := s.Lookup(owner)
	if err != nil {
		return err
	}
	if err := s.writeIndex(owner, append(held, addrs...)); err != nil {
		return err
	}
	content := []byte(owner.ContainerID + "\n" + owner.IfName + "\n")
	for i, a := range addrs {
		err := s.create(a, content)
		if err == nil {
			continue
		}
		for _, done := range addrs[:i] {
			_ = os.Remove(s.addrPath(done))
		}
		// The index may now list addresses we do not hold; Lookup ignores
		// those, but put it back to keep it tidy.
		_ = s.writeIndex(owner, held)
		return err
	}
	return nil
}

func (s *DiskStore) create(a netip.Addr, content []byte) error {
	f, err := os.OpenFile(s.addrPath(a), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s", ErrReserved, a)
	}
	if err != nil {
		return fmt.Errorf("ipam: reserve %s: %w", a, err)
	}
	_, werr := f.Write(content)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("ipam: reserve %s: %w", a, err)
	}
	return nil
}

// writeIndex replaces owner's index with addrs (removing it when empty).
func (s *DiskStore) writeIndex(owner Owner, addrs []netip.Addr) error {
	path := s.ownerPath(owner)
	if len(addrs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ipam: %w", err)
		}
		return nil
	}
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	var b strings.Builder
	for _, a := range addrs {
		b.WriteString(a.String())
		b.WriteByte('\n')
	}
	// Container IDs never start with '.', so this cannot be another owner's index.
	tmp := filepath.Join(filepath.Dir(path), ".tmp."+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("ipam: write owner index: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("ipam: write owner index: %w", err)
	}
	return nil
}

// readOwner parses an address record; ok is false for a missing file or an
// unreadable (crash-truncated) record.
func (s *DiskStore) readOwner(a netip.Addr) (Owner, bool, error) {
	b, err := os.ReadFile(s.addrPath(a))
	if errors.Is(err, fs.ErrNotExist) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, fmt.Errorf("ipam: read record %s: %w", a, err)
	}
	o, ok := parseRecord(b)
	return o, ok, nil
}

func parseRecord(b []byte) (Owner, bool) {
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) != 3 || len(lines[2]) != 0 {
		return Owner{}, false
	}
	o := Owner{ContainerID: string(lines[0]), IfName: string(lines[1])}
	if o.Validate() != nil {
		return Owner{}, false
	}
	return o, true
}

func (s *DiskStore) Lookup(owner Owner) ([]netip.Addr, error) {
	if err := owner.Validate(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.ownerPath(owner))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: read owner index: %w", err)
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(b), "\n") {
		a, ok := recordName(line)
		if !ok {
			continue // torn, empty or hand-edited line
		}
		if slices.Contains(out, a) {
			continue // a hand-edited index may list an address twice
		}
		o, ok, err := s.readOwner(a)
		if err != nil {
			return nil, err
		}
		if ok && o == owner {
			out = append(out, a)
		}
	}
	return out, nil
}

func (s *DiskStore) Release(owner Owner, addrs ...netip.Addr) ([]netip.Addr, error) {
	if owner.Validate() != nil {
		return nil, nil // nothing can be recorded under such a name
	}
	held, err := s.Lookup(owner)
	if err != nil {
		return nil, err
	}
	var freed, kept []netip.Addr
	for _, a := range held {
		if len(addrs) > 0 && !slices.Contains(addrs, a) {
			kept = append(kept, a)
			continue
		}
		if err := os.Remove(s.addrPath(a)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freed, fmt.Errorf("ipam: release %s: %w", a, err)
		}
		freed = append(freed, a)
	}
	return freed, s.writeIndex(owner, kept)
}

func (s *DiskStore) ReleaseAddr(a netip.Addr) error {
	if err := os.Remove(s.addrPath(a)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ipam: release %s: %w", a, err)
	}
	return nil
}

func (s *DiskStore) List() ([]Allocation, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "ips"))
	if err != nil {
		return nil, fmt.Errorf("ipam: list: %w", err)
	}
	var out []Allocation
	for _, e := range entries {
		a, ok := recordName(e.Name())
		if !ok {
			continue // not ours
		}
		o, _, err := s.readOwner(a)
		if err != nil {
			return nil, err
		}
		out = append(out, Allocation{Addr: a, Owner: o})
	}
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out, nil
}

// ReservedAddrs lists the reserved addresses from the directory names alone.
func (s *DiskStore) ReservedAddrs() (map[netip.Addr]bool, error) {
	f, err := os.Open(filepath.Join(s.dir, "ips"))
	if err != nil {
		return nil, fmt.Errorf("ipam: list: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("ipam: list: %w", err)
	}
	set := make(map[netip.Addr]bool, len(names))
	for _, n := range names {
		if a, ok := recordName(n); ok {
			set[a] = true
		}
	}
	return set, nil
}

// recordName parses a directory entry or index line as an address record's
// name. Only what we write counts: the canonical spelling without a zone. A
// stray "0::" would parse as "::" yet never be found (or removed) under it,
// and a zone can hold bytes no file name may.
func recordName(n string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(n)
	if err != nil || a.Zone() != "" || a.String() != n {
		return netip.Addr{}, false
	}
	return a, true
}

func (s *DiskStore) lastPath(key string) string {
	return filepath.Join(s.dir, "last-reserved."+key)
}

func (s *DiskStore) LastReserved(key string) (netip.Addr, error) {
	b, err := os.ReadFile(s.lastPath(key))
	if errors.Is(err, fs.ErrNotExist) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: %w", err)
	}
	a, ok := recordName(strings.TrimSpace(string(b)))
	if !ok {
		return netip.Addr{}, nil // torn write: only the round-robin position is lost
	}
	return a, nil
}

func (s *DiskStore) SetLastReserved(key string, a netip.Addr) error {
	// Overwritten in place at a fixed width rather than truncated: ext4
	// flushes a file that is truncated to zero and rewritten (auto_da_alloc),
	// which made this hint the slowest step of an ADD. A torn write is
	// harmless, LastReserved treats it as "no position".
	f, err := os.OpenFile(s.lastPath(key), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	_, werr := f.WriteAt([]byte(fmt.Sprintf("%-47s\n", a)), 0)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	return nil
}
