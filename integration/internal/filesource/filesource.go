// Package filesource is a mesh.NodeSource for root tests that run real
// agents (mesh/agent) without a kube-apiserver: a JSON spec file lists the
// Nodes (mesh.RawNode: name, podCIDRs, InternalIPs, operator annotations)
// and a directory holds each Node's current annotations as <node>.json,
// written by the node's own Publish and by the test (Annotate) under an
// flock, the way both would patch one Node object. Every node polls the
// files, so key and endpoint exchange goes through the reconciler's real
// Publish path.
//
// Without an annotation directory the spec is all there is: it already
// carries every node's published key and endpoint (the benchmark writes
// them up front, so that no publish round trip sits in what it measures),
// and Publish is accepted and dropped.
package filesource

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// DefaultPoll is how often Run looks at the files.
const DefaultPoll = 200 * time.Millisecond

// Config configures a Source.
type Config struct {
	// Spec is the JSON file with the []mesh.RawNode list.
	Spec string
	// AnnDir holds <node>.json annotation files. Empty: none; the spec's
	// annotations are final and Publish drops what it is given.
	AnnDir string
	// Self names the node Publish writes to.
	Self string
	// Poll is the change-detection period; zero means DefaultPoll.
	Poll   time.Duration
	Logger *slog.Logger
}

// Source is the file-backed mesh.NodeSource.
type Source struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}

	mu     sync.Mutex
	synced bool
}

var _ mesh.NodeSource = (*Source)(nil)

// New returns a Source; it does no I/O.
func New(cfg Config) *Source {
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log, changed: make(chan struct{}, 1)}
}

// Run signals Changed whenever the spec or any annotation file changes,
// until ctx ends; it returns nil then. The first successful read marks the
// source synced.
func (s *Source) Run(ctx context.Context) error {
	var last [32]byte
	t := time.NewTicker(s.cfg.Poll)
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
			return nil
		case <-t.C:
		}
	}
}

func (s *Source) fingerprint() ([32]byte, error) {
	h := sha256.New()
	raw, err := os.ReadFile(s.cfg.Spec)
	if err != nil {
		return [32]byte{}, err
	}
	h.Write(raw)
	if s.cfg.AnnDir != "" {
		files, _ := filepath.Glob(filepath.Join(s.cfg.AnnDir, "*.json"))
		slices.Sort(files)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return [32]byte{}, err
			}
			fmt.Fprintf(h, "%s\x00%s\x00", f, b)
		}
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

// Nodes reads the spec and merges each node's annotation file over the
// spec's annotations.
func (s *Source) Nodes() ([]mesh.RawNode, error) {
	raw, err := os.ReadFile(s.cfg.Spec)
	if err != nil {
		return nil, err
	}
	var nodes []mesh.RawNode
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("node spec: %w", err)
	}
	if s.cfg.AnnDir == "" {
		return nodes, nil
	}
	for i := range nodes {
		ann, err := readAnnotations(s.cfg.AnnDir, nodes[i].Name)
		if err != nil {
			return nil, err
		}
		merged := maps.Clone(nodes[i].Annotations)
		if merged == nil {
			merged = map[string]string{}
		}
		maps.Copy(merged, ann)
		nodes[i].Annotations = merged
	}
	return nodes, nil
}

// Changed is the level trigger.
func (s *Source) Changed() <-chan struct{} { return s.changed }

// HasSynced reports whether Run has read the files once.
func (s *Source) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Publish merges into our own annotation file; without an annotation
// directory it drops the annotations (the spec already has them).
func (s *Source) Publish(_ context.Context, annotations map[string]string) error {
	if s.cfg.AnnDir == "" {
		s.log.Debug("publish dropped: the node spec is read-only", "annotations", annotations)
		return nil
	}
	return Annotate(s.cfg.AnnDir, s.cfg.Self, annotations)
}

// Warn logs the warning (there is no event sink).
func (s *Source) Warn(node, reason, message string) {
	s.log.Warn("node event", "peer_node", node, "reason", reason, "message", message)
}

// Annotate merges annotations into node's annotation file under an flock
// on the directory (so a test's write and an agent's Publish never lose
// each other's keys) and replaces it atomically. An empty value deletes
// the key, as null does in a merge patch.
func Annotate(annDir, node string, annotations map[string]string) error {
	unlock, err := lock(annDir)
	if err != nil {
		return err
	}
	defer unlock()
	ann, err := readAnnotations(annDir, node)
	if err != nil {
		return err
	}
	for k, v := range annotations {
		if v == "" {
			delete(ann, k)
		} else {
			ann[k] = v
		}
	}
	b, err := json.Marshal(ann)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(annDir, ".tmp-*")
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
	return os.Rename(tmp.Name(), filepath.Join(annDir, node+".json"))
}

// Annotations returns node's current annotation file (not the spec's).
func Annotations(annDir, node string) (map[string]string, error) {
	return readAnnotations(annDir, node)
}

func readAnnotations(annDir, node string) (map[string]string, error) {
	ann := map[string]string{}
	b, err := os.ReadFile(filepath.Join(annDir, node+".json"))
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

func lock(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
