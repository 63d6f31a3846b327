package agentstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/wgmesh/wgmesh/mesh"
)

// Path returns the state file's path inside runDir.
func Path(runDir string) string { return filepath.Join(runDir, FileName) }

// Read loads and validates the state file. A missing file gives an error
// wrapping ErrNoState and os.ErrNotExist; a malformed one wraps ErrBadState.
func Read(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s: %w", ErrNoState, path, err)
		}
		return nil, fmt.Errorf("read agent state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadState, path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadState, path, err)
	}
	return &s, nil
}

// Write stores s at path atomically: a reader sees the old file or the new
// one, never a torn write. The directory is created (0755) if missing; the
// file is 0644 because it holds nothing secret.
func Write(path string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode agent state: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write agent state: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if tmp != "" {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write agent state: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("write agent state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write agent state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write agent state: %w", err)
	}
	tmp = ""
	return nil
}

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Path of the state file, e.g. Path(runDir).
	Path string
	// Info describes this node.
	Info   Info
	Logger *slog.Logger
}

// Writer records the reconciler's status after every pass; its Observe
// method is a mesh.Config.OnReconcile hook.
type Writer struct {
	cfg WriterConfig
	log *slog.Logger

	mu      sync.Mutex
	prev    *State
	loaded  bool
	lastErr string
}

// NewWriter returns a Writer. It does no I/O.
func NewWriter(cfg WriterConfig) *Writer {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{cfg: cfg, log: log}
}

// Observe writes the state for one pass. Failures are logged (once per
// distinct error) and never stop the agent: the file is a diagnostic aid.
func (w *Writer) Observe(st mesh.Status) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.loaded {
		// Carry peers' Since over an agent restart.
		if prev, err := Read(w.cfg.Path); err == nil && prev.Node == w.cfg.Info.Node {
			w.prev = prev
		}
		w.loaded = true
	}
	s := FromStatus(w.cfg.Info, st, w.prev)
	err := Write(w.cfg.Path, s)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg != w.lastErr {
		if err != nil {
			w.log.Warn("cannot write agent state file; wgmeshctl will lack node names", "path", w.cfg.Path, "err", err)
		} else {
			w.log.Info("writing agent state file", "path", w.cfg.Path)
		}
		w.lastErr = msg
	}
	w.prev = &s
}
