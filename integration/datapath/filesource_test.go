package datapath

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// fileSource is a mesh.NodeSource standing in for the apiserver: a JSON
// spec file lists the Nodes (name, podCIDRs, InternalIPs) and a directory
// holds each node's published annotations as <node>.json. Every agent
// publishes into the shared directory and polls it, so key and endpoint
// exchange goes through the reconciler's real Publish path.
type fileSource struct {
	spec    string
	annDir  string
	self    string
	log     *slog.Logger
	changed chan struct{}

	mu     sync.Mutex
	synced bool
}

func newFileSource(spec, annDir, self string, log *slog.Logger) *fileSource {
	return &fileSource{spec: spec, annDir: annDir, self: self, log: log, changed: make(chan struct{}, 1)}
}

// run signals Changed whenever the spec or any annotation file changes.
func (s *fileSource) run(ctx context.Context) {
	var last [32]byte
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if sum, err := s.fingerprint(); err == nil && sum != last {
			last = sum
			s.mu.Lock()
			s.synced = true
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *fileSource) fingerprint() ([32]byte, error) {
	h := sha256.New()
	raw, err := os.ReadFile(s.spec)
	if err != nil {
		return [32]byte{}, err
	}
	h.Write(raw)
	files, _ := filepath.Glob(filepath.Join(s.annDir, "*.json"))
	slices.Sort(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return [32]byte{}, err
		}
		fmt.Fprintf(h, "%s\x00%s\x00", f, b)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

func (s *fileSource) Nodes() ([]mesh.RawNode, error) {
	raw, err := os.ReadFile(s.spec)
	if err != nil {
		return nil, err
	}
	var nodes []mesh.RawNode
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("node spec: %w", err)
	}
	for i := range nodes {
		ann, err := s.annotations(nodes[i].Name)
		if err != nil {
			return nil, err
		}
		nodes[i].Annotations = ann
	}
	return nodes, nil
}

func (s *fileSource) annotations(node string) (map[string]string, error) {
	ann := map[string]string{}
	b, err := os.ReadFile(filepath.Join(s.annDir, node+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return ann, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &ann); err != nil {
		return nil, fmt.Errorf("annotations of %s: %w", node, err)
	}
	return ann, nil
}

func (s *fileSource) Changed() <-chan struct{} { return s.changed }

func (s *fileSource) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Publish merges into our own annotation file, atomically (rename).
func (s *fileSource) Publish(_ context.Context, annotations map[string]string) error {
	ann, err := s.annotations(s.self)
	if err != nil {
		return err
	}
	for k, v := range annotations {
		ann[k] = v
	}
	b, err := json.Marshal(ann)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.annDir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(s.annDir, s.self+".json"))
}

func (s *fileSource) Warn(node, reason, message string) {
	s.log.Warn("node event", "node", node, "reason", reason, "message", message)
}
