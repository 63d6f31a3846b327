// Package labtest is what the lab suites (integration/e2e, integration/soak)
// share around integration/lab: their TestMain, bringing a lab up for one
// test and removing it by its own names, and the underlay capture command.
package labtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/labbin"
	"github.com/wgmesh/wgmesh/integration/lab"
)

// Main is a lab suite's TestMain: it fails (never skips) without root or
// one of tools, builds the lab's binaries into a temporary directory, sets
// *binDir to it and runs the tests. suite names the package in messages.
func Main(m *testing.M, suite string, tools []string, binDir *string) int {
	// Suites run under `flock LOCK go test`: a process a test starts that
	// outlives it (a leaked server) would otherwise hold the shared lock
	// until killed (seen: 45 min).
	lab.CloseInheritedOnExec()
	if os.Geteuid() != 0 {
		fmt.Fprintf(os.Stderr, "FAIL: integration/%s needs root (network and mount namespaces); run it with sudo\n", suite)
		return 1
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: integration/%s needs %s (integration/scripts/deps.sh installs them)\n", suite, strings.Join(missing, ", "))
		return 1
	}
	dir, err := os.MkdirTemp("", "wgmesh-"+suite+"-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := labbin.Build(dir, suite, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: build:", err)
		return 1
	}
	*binDir = dir
	return m.Run()
}

// Setup is a lab for one test.
type Setup struct {
	// Prefix starts the lab's name; random hex makes it unique, so that
	// parallel tests and packages never share namespace names.
	Prefix string
	// StateRoot holds the lab's state directory (/run/wgmesh-<suite>).
	StateRoot string
	BinDir    string
	// AgentArgs are extra flags for every agent (lab.Config.AgentArgs).
	AgentArgs []string
	Opts      lab.UpOptions
	// Limit bounds Up.
	Limit time.Duration
	// BeforeUp, if set, runs with the lab's name and state directory
	// before Up starts (e.g. to start a capture once the underlay exists).
	BeforeUp func(name, stateDir string)
}

// Up brings the lab up for t and, when t ends (also on failure), removes
// it and checks that nothing of it is left; the logs' tails go to t if it
// failed.
func Up(t *testing.T, ctx context.Context, s Setup) *lab.Lab {
	t.Helper()
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := s.Prefix + hex.EncodeToString(b[:])
	stateDir := filepath.Join(s.StateRoot, name)
	l := lab.New(lab.Config{
		Name:      name,
		StateDir:  stateDir,
		BinDir:    s.BinDir,
		AgentArgs: s.AgentArgs,
		Log:       slog.New(slog.NewTextHandler(Writer(t), &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	t.Cleanup(func() {
		if t.Failed() {
			DumpLogs(t, l)
		}
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("lab down: %v", err)
		}
		AssertCleanedUp(t, name, stateDir)
		if s.Opts.Kubelet {
			if left, _ := filepath.Glob("/sys/fs/cgroup/*/wgmesh-lab-" + name); len(left) > 0 {
				t.Errorf("lab down left cgroups %v", left)
			}
		}
	})
	if s.BeforeUp != nil {
		s.BeforeUp(name, stateDir)
	}
	upCtx, cancel := context.WithTimeout(ctx, s.Limit)
	defer cancel()
	start := time.Now()
	if err := l.Up(upCtx, s.Opts); err != nil {
		t.Fatalf("lab up (kubelet %v): %v", s.Opts.Kubelet, err)
	}
	t.Logf("lab %s up (%d nodes x %d pods, kubelet %v) in %s", name, s.Opts.Nodes, s.Opts.Pods, s.Opts.Kubelet, time.Since(start).Round(time.Millisecond))
	return l
}

// AssertCleanedUp checks that Down left no namespace or state behind.
func AssertCleanedUp(t *testing.T, name, stateDir string) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "wgl-"+name+"-") {
			t.Errorf("lab down left network namespace %s", e.Name())
		}
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Errorf("lab down left state dir %s", stateDir)
	}
}

// Writer logs each write to t as one line (for a lab's slog handler).
func Writer(t *testing.T) io.Writer { return &testWriter{t} }

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// DumpLogs logs the last 40 lines of every log the lab kept.
func DumpLogs(t *testing.T, l *lab.Lab) {
	if err := l.Load(); err != nil {
		return
	}
	dir := filepath.Join(l.Config().StateDir, "logs")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("---- last lines of %s ----\n%s", e.Name(), strings.Join(lines, "\n"))
	}
}

// Tcpdump is the argv of a capture: enter (e.g. "ip netns exec NS"), then
// tcpdump with args. Every capture in the suites asserts on frames up to
// its very end, so it runs unbuffered: -U flushes each packet to the file
// and --immediate-mode delivers it from the kernel at once (without it the
// frames of the last ring block before SIGINT were lost: 58 of 72 WireGuard
// frames in one run, 0 of 20 in another). -n: no name lookups.
func Tcpdump(enter []string, args ...string) []string {
	argv := append(append([]string(nil), enter...), "tcpdump", "-n", "-U", "--immediate-mode")
	return append(argv, args...)
}
