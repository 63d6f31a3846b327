package agentstate

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzReadState plants arbitrary bytes where the agent keeps its state
// file, as a crash, a full disk or a hand edit could leave them, and reads
// them back the ways the agent and wgmeshctl do. Whatever is on disk, Read
// must not panic and must either refuse it with ErrBadState or return a
// state that validates and survives a write/read round trip; a restarting
// agent either restores valid peers or gets a clear error, and the next
// pass's write replaces whatever was there. Seeds are in
// testdata/fuzz/FuzzReadState.
func FuzzReadState(f *testing.F) {
	good := `{"version":1,"node":"node-a","publicKey":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",` +
		`"peers":[{"node":"node-b","publicKey":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",` +
		`"endpoint":"198.51.100.11:51820","allowedIPs":["10.244.1.0/24"],"persistentKeepaliveSeconds":25}]}`
	f.Add([]byte(good))
	f.Add([]byte(good[:len(good)/2])) // truncated by a crash
	f.Add([]byte(""))
	f.Add([]byte("\x00\x00\x00\x00"))
	f.Add([]byte(`{"version":1,"node":"node-a","peers":[{"node":"node-b","publicKey":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","allowedIPs":["10.244.1.7/24","::ffff:10.0.0.0/104"]}]}`))
	f.Add([]byte(`{"version":1,"node":"node-a","peers":null,"excluded":[{"node":""}]}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(dir, FileName)
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := Read(path)
		restored, rerr := Restore(path, "node-a", "wgmesh0")
		peers := restored.Peers
		if err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("Read: %v, want an error wrapping ErrBadState", err)
			}
			if !errors.Is(rerr, ErrBadState) || peers != nil {
				t.Fatalf("Restore of a bad file = %d peers, %v; want none and ErrBadState", len(peers), rerr)
			}
			return
		}
		if verr := s.Validate(); verr != nil {
			t.Fatalf("Read accepted a state that does not validate: %v", verr)
		}
		if rerr != nil && !errors.Is(rerr, ErrOtherOwner) {
			t.Fatalf("Restore of a valid file: %v", rerr)
		}
		if rerr == nil && (len(peers) != len(s.Peers) || len(restored.KnownKeys) != len(s.Peers)) {
			t.Fatalf("Restore returned %d peers and %d known keys of %d", len(peers), len(restored.KnownKeys), len(s.Peers))
		}
		if err := Write(path, *s); err != nil {
			t.Fatal(err)
		}
		again, err := Read(path)
		if err != nil {
			t.Fatalf("a state Read accepted does not read back after Write: %v", err)
		}
		if d := cmp.Diff(s, again); d != "" {
			t.Fatalf("round trip changed the state (-first +second):\n%s", d)
		}
	})
}
