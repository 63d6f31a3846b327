// Package netnstest helps root tests build throw-away network namespaces,
// veth links and processes inside them. Everything it creates is named with
// a per-test prefix and removed in t.Cleanup by that exact name or pid, also
// when the test fails; it never touches anything it did not create.
package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireRoot fails the test (never skips it) unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (network namespaces, TUN, nftables): run it with sudo / as root")
	}
}

// RequireTools fails the test unless every named program is on PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("missing tools %v: install them (see integration/scripts/deps.sh)", missing)
	}
}

// Prefix returns a short unique name prefix such as "wt3fa2c1": short
// enough to leave room in 15-byte interface names, random so that parallel
// suites and leftovers of killed runs never collide.
func Prefix(t testing.TB) string {
	t.Helper()
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "wt" + hex.EncodeToString(b[:])
}

// NS is a named network namespace made by the test.
type NS struct {
	Name string
}

// NewNS creates the named namespace with its loopback up, and deletes it in
// cleanup. It fails if the name exists: that would be somebody else's.
func NewNS(t testing.TB, name string) *NS {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
		t.Fatalf("netns %s already exists; refusing to reuse it", name)
	}
	if out, err := run("ip", "netns", "add", name); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name}
	t.Cleanup(func() {
		if out, err := run("ip", "netns", "del", name); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Command returns a command that runs argv inside the namespace.
func (ns *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
}

// Run runs argv in the namespace and returns its combined output.
func (ns *NS) Run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := ns.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("[%s] %s: %w", ns.Name, strings.Join(argv, " "), err)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := ns.Run(argv...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Veth creates a veth pair directly between two namespaces (nothing is ever
// created in the test's own namespace) and sets both ends up. Addresses are
// optional (invalid prefixes are skipped). The links disappear with their
// namespaces.
func Veth(t testing.TB, a *NS, aName string, aAddr netip.Prefix, b *NS, bName string, bAddr netip.Prefix) {
	t.Helper()
	if out, err := run("ip", "link", "add", aName, "netns", a.Name, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		t.Fatalf("create veth %s/%s: %v: %s", aName, bName, err, out)
	}
	for _, end := range []struct {
		ns   *NS
		name string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if end.addr.IsValid() {
			end.ns.MustRun(t, "ip", "addr", "add", end.addr.String(), "dev", end.name)
		}
		end.ns.MustRun(t, "ip", "link", "set", end.name, "up")
	}
}

// Proc is a process started by Start.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
	err  error
}

// Start runs argv inside the namespace with extra environment variables,
// capturing its output. Cleanup kills it by its pid (its own process group)
// if it is still running, and logs its output if the test failed.
func (ns *NS) Start(t testing.TB, name string, env []string, argv ...string) *Proc {
	t.Helper()
	// Its own process group, so cleanup can signal exactly this process
	// (ip netns exec execs into argv, keeping the pid) and its children.
	return ns.start(t, name, env, &syscall.SysProcAttr{Setpgid: true}, argv)
}

// StartSession is Start in a session of its own (its process group too).
// With the kernel's autogroup scheduling (CONFIG_SCHED_AUTOGROUP, on in
// Debian's kernels) a session is also a CPU scheduling group of its own,
// as a daemon's service or container cgroup is on a real node; the lab
// starts its agents that way. Daemons compared with each other must be
// started alike: the same wireguard-go made twice the context switches
// per byte in a session of its own as in the test's (docs/benchmarks.md,
// issue 15 round 9).
func (ns *NS) StartSession(t testing.TB, name string, env []string, argv ...string) *Proc {
	t.Helper()
	return ns.start(t, name, env, &syscall.SysProcAttr{Setsid: true}, argv)
}

func (ns *NS) start(t testing.TB, name string, env []string, attr *syscall.SysProcAttr, argv []string) *Proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	buf := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, ns.Name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, out: buf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("---- output of %s (pid %d) ----\n%s", name, cmd.Process.Pid, p.Output())
		}
	})
	return p
}

// Pid is the process id (the program itself: ip netns exec execs into it).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Output returns what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process ends.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends sig and waits up to timeout for the process to exit; it returns
// the process's exit error (nil for status 0). After the timeout it kills
// the process group and returns an error.
func (p *Proc) Stop(sig syscall.Signal, timeout time.Duration) error {
	if p.Exited() {
		return p.err
	}
	if err := syscall.Kill(p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not exit within %s of %s; killed", p.Name, timeout, sig)
	}
}

// Eventually calls f until it returns nil or timeout passes, then fails the
// test with f's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}

// SyncBuffer is a bytes.Buffer safe for a process's stdout and stderr at
// once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
