package agentstate

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

func key(t *testing.T, b byte) wgtypes.Key {
	t.Helper()
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	return k
}

func status(t *testing.T, at time.Time) mesh.Status {
	return mesh.Status{
		LastReconcile: at,
		Synced:        true,
		SelfFound:     true,
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
		Peers: []mesh.Peer{
			{Node: "node-c", PublicKey: key(t, 3), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
			{Node: "node-b", PublicKey: key(t, 2), Endpoint: netip.MustParseAddrPort("198.51.100.11:51820"),
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Keepalive: 25 * time.Second},
		},
		Excluded:   []mesh.Exclusion{{Node: "node-x", Reason: mesh.ReasonNoPublicKey, Err: errors.New("annotation wgmesh.io/public-key is missing")}},
		Degraded:   []mesh.Exclusion{{Node: "node-c", Reason: mesh.ReasonUnresolvable, Err: errors.New("endpoint host \"c.example\" did not resolve")}},
		Reconciles: 7, Errors: 1, Err: errors.New("apply dataplane: boom"),
	}
}

func TestFromStatus(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	info := Info{Node: "node-a", Interface: "wgmesh0", PublicKey: key(t, 1), ListenPort: 51820}
	got := FromStatus(info, status(t, t0), nil)
	want := State{
		Version: 1, Node: "node-a", Interface: "wgmesh0", PublicKey: key(t, 1).String(), ListenPort: 51820,
		LastReconcile: t0, LastError: "apply dataplane: boom", Synced: true, Reconciles: 7, Errors: 1,
		LocalPodCIDRs: []string{"10.244.0.0/24"},
		Peers: []Peer{
			{Node: "node-b", PublicKey: key(t, 2).String(), Endpoint: "198.51.100.11:51820", AllowedIPs: []string{"10.244.1.0/24"},
				PersistentKeepaliveSeconds: 25, Since: t0},
			{Node: "node-c", PublicKey: key(t, 3).String(), AllowedIPs: []string{"10.244.2.0/24"}, Since: t0},
		},
		Excluded: []Exclusion{{Node: "node-x", Reason: "no-public-key", Message: "annotation wgmesh.io/public-key is missing"}},
		Degraded: []Exclusion{{Node: "node-c", Reason: "unresolvable-endpoint", Message: "endpoint host \"c.example\" did not resolve"}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("FromStatus (-want +got):\n%s", d)
	}

	// A later pass keeps node-b's Since; node-c with a new key starts anew.
	t1 := t0.Add(time.Minute)
	st := status(t, t1)
	st.Peers[0].PublicKey = key(t, 9)
	next := FromStatus(info, st, &got)
	if !next.Peers[0].Since.Equal(t0) {
		t.Errorf("node-b since = %v, want %v (kept)", next.Peers[0].Since, t0)
	}
	if !next.Peers[1].Since.Equal(t1) {
		t.Errorf("node-c since = %v, want %v (new key)", next.Peers[1].Since, t1)
	}
}

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", FileName)
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := FromStatus(Info{Node: "node-a", PublicKey: key(t, 1)}, status(t, t0), nil)
	if err := Write(path, s); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&s, got); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only the state file (no temp files left)", len(entries))
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(filepath.Join(dir, "absent.json")); !errors.Is(err, ErrNoState) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNoState and fs.ErrNotExist", err)
	}
	good := `"node":"a","publicKey":"` + key(t, 1).String() + `"`
	for name, content := range map[string]string{
		"not json":      "{",
		"newer version": `{"version":2,` + good + `}`,
		"no version":    `{` + good + `}`,
		"bad peer key":  `{"version":1,` + good + `,"peers":[{"node":"b","publicKey":"nope","allowedIPs":[]}]}`,
		"bad prefix":    `{"version":1,` + good + `,"peers":[{"node":"b","publicKey":"` + key(t, 2).String() + `","allowedIPs":["10.0.0.0/33"]}]}`,
		"bad endpoint":  `{"version":1,` + good + `,"peers":[{"node":"b","publicKey":"` + key(t, 2).String() + `","endpoint":"x","allowedIPs":[]}]}`,
		"duplicate":     `{"version":1,` + good + `,"peers":[{"node":"b","publicKey":"` + key(t, 2).String() + `"},{"node":"b","publicKey":"` + key(t, 3).String() + `"}]}`,
		"no node":       `{"version":1,"publicKey":"` + key(t, 1).String() + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".json")
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Read(p)
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("err = %v, want ErrBadState", err)
			}
		})
	}
}

func TestWriterKeepsSinceAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	info := Info{Node: "node-a", PublicKey: key(t, 1)}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	NewWriter(WriterConfig{Path: path, Info: info}).Observe(status(t, t0))

	// A new writer (agent restart) reads the old file first.
	w := NewWriter(WriterConfig{Path: path, Info: info})
	w.Observe(status(t, t0.Add(time.Hour)))
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastReconcile.Equal(t0.Add(time.Hour)) {
		t.Errorf("lastReconcile = %v, want the second pass", got.LastReconcile)
	}
	for _, p := range got.Peers {
		if !p.Since.Equal(t0) {
			t.Errorf("peer %s since = %v, want %v carried over the restart", p.Node, p.Since, t0)
		}
	}
}

func TestWriterFailureIsNotFatal(t *testing.T) {
	dir := t.TempDir()
	// The state path's parent is a regular file: every write fails.
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(WriterConfig{Path: filepath.Join(blocker, FileName), Info: Info{Node: "node-a"}})
	w.Observe(status(t, time.Now())) // must not panic
	if w.lastErr == "" {
		t.Fatal("write into a non-directory succeeded?")
	}
}

func TestFromStatusFollowsRotatedKey(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	info := Info{Node: "node-a", Interface: "wgmesh0", PublicKey: key(t, 1), ListenPort: 51820}
	st := status(t, t0)
	st.PublicKey = key(t, 7) // the reconciler rotated since start
	if got := FromStatus(info, st, nil).PublicKey; got != key(t, 7).String() {
		t.Errorf("state public key %s, want the rotated %s", got, key(t, 7))
	}
}

// A crash can leave the state file truncated: the restarting agent restores
// nothing from it (a clear error) and its first pass replaces it whole.
func TestWriterReplacesCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	info := Info{Node: "node-a", Interface: "wgmesh0", PublicKey: key(t, 1)}
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	NewWriter(WriterConfig{Path: path, Info: info}).Observe(status(t, t0))
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, whole[:len(whole)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Restore(path, "node-a", "wgmesh0"); !errors.Is(err, ErrBadState) || got.Peers != nil || got.KnownKeys != nil {
		t.Fatalf("Restore of a truncated file = %+v, %v; want nothing and ErrBadState", got, err)
	}

	t1 := t0.Add(time.Hour)
	NewWriter(WriterConfig{Path: path, Info: info}).Observe(status(t, t1))
	got, err := Read(path)
	if err != nil {
		t.Fatalf("after the first pass: %v", err)
	}
	for _, p := range got.Peers {
		// Nothing was carried from the unreadable file.
		if !p.Since.Equal(t1) {
			t.Errorf("peer %s since = %v, want %v", p.Node, p.Since, t1)
		}
	}
	if len(got.Peers) != 2 {
		t.Errorf("state has %d peers, want 2", len(got.Peers))
	}
}
