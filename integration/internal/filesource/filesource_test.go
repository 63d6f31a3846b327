package filesource

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

func writeSpec(t *testing.T, path string, nodes []mesh.RawNode) {
	t.Helper()
	raw, err := json.Marshal(nodes)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func waitChanged(t *testing.T, s *Source) {
	t.Helper()
	select {
	case <-s.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signal within 5s")
	}
}

// TestSources runs both modes over the same spec: with an annotation
// directory Publish lands in the node's file and merges over the spec;
// without one the spec is final and Publish writes nothing anywhere.
func TestSources(t *testing.T) {
	for _, withDir := range []bool{true, false} {
		name := map[bool]string{true: "annotation dir", false: "spec only"}[withDir]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			spec := filepath.Join(dir, "nodes.json")
			cfg := Config{Spec: spec, Self: "a", Poll: 10 * time.Millisecond}
			if withDir {
				cfg.AnnDir = filepath.Join(dir, "ann")
				if err := os.Mkdir(cfg.AnnDir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			s := New(cfg)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()

			if s.HasSynced() {
				t.Fatal("synced before the spec exists")
			}
			specAnn := map[string]string{mesh.AnnotationPublicKey: "from-spec"}
			writeSpec(t, spec, []mesh.RawNode{{Name: "a", Annotations: specAnn}, {Name: "b"}})
			waitChanged(t, s)
			if !s.HasSynced() {
				t.Fatal("not synced after the spec appeared")
			}

			// The test's cwd must stay clean whatever the mode (an empty
			// AnnDir once meant "the current directory").
			wd, err := os.Getwd()
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadDir(wd)
			if err := s.Publish(ctx, map[string]string{mesh.AnnotationPublicKey: "published"}); err != nil {
				t.Fatal(err)
			}
			if after, _ := os.ReadDir(wd); len(after) != len(before) {
				t.Errorf("Publish wrote into the working directory (%d entries, were %d)", len(after), len(before))
			}
			want := "from-spec"
			if withDir {
				want = "published"
				waitChanged(t, s) // our own annotation file changed
			}
			nodes, err := s.Nodes()
			if err != nil {
				t.Fatal(err)
			}
			if got := nodes[0].Annotations[mesh.AnnotationPublicKey]; got != want {
				t.Errorf("a's key annotation %q, want %q", got, want)
			}

			// A changed spec signals again.
			writeSpec(t, spec, []mesh.RawNode{{Name: "a", Annotations: specAnn}, {Name: "b"}, {Name: "c"}})
			waitChanged(t, s)
			nodes, err = s.Nodes()
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, n := range nodes {
				names = append(names, n.Name)
			}
			if d := cmp.Diff([]string{"a", "b", "c"}, names); d != "" {
				t.Errorf("nodes (-want +got):\n%s", d)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}
