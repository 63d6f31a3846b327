package soak

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/integration/internal/reexec"
)

// pod is one lab pod as the soak sees it. argv runs a command in it; it is
// taken from the lab once, so the traffic goroutines never read the lab's
// state while a fault changes it.
type pod struct {
	Node, Name, IP string
	argv           []string
}

func (p *pod) key() string { return p.Node + "/" + p.Name }

// pingInterval is how often every pod pings every other pod; it is also
// the resolution of the convergence figures.
const pingInterval = 200 * time.Millisecond

// pinger is a ping running from one pod to another for as long as both
// exist; it keeps the -D timestamp and round-trip time of every reply.
type pinger struct {
	from, to *pod
	cmd      *exec.Cmd
	done     chan struct{}
	mu       sync.Mutex
	replies  []time.Time
	rtts     []time.Duration // rtts[i] is replies[i]'s
	started  time.Time
}

func startPinger(from, to *pod) (*pinger, error) {
	argv := append(slices.Clone(from.argv), "ping", "-D", "-n", "-i", fmt.Sprint(pingInterval.Seconds()), "-W", "1", to.IP)
	p := &pinger{from: from, to: to, cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{}), started: time.Now()}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", argv, err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			for _, r := range pingout.Parse(sc.Text()).Replies {
				if r.At.IsZero() {
					continue
				}
				p.mu.Lock()
				p.replies = append(p.replies, r.At)
				p.rtts = append(p.rtts, r.RTT)
				p.mu.Unlock()
			}
		}
		_ = p.cmd.Wait()
	}()
	return p, nil
}

// firstReplyAfter returns the first reply at or after t.
func (p *pinger) firstReplyAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.replies, t, func(a, b time.Time) int { return a.Compare(b) })
	if i == len(p.replies) {
		return time.Time{}, false
	}
	return p.replies[i], true
}

// rttsBetween returns the round-trip times of the replies that arrived in
// [from, to).
func (p *pinger) rttsBetween(from, to time.Time) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmp := func(a, b time.Time) int { return a.Compare(b) }
	i, _ := slices.BinarySearchFunc(p.replies, from, cmp)
	j, _ := slices.BinarySearchFunc(p.replies, to, cmp)
	return slices.Clone(p.rtts[i:j])
}

// stop kills the ping (by its process group: nsenter and ping) and waits.
func (p *pinger) stop() {
	if p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// stream is one checked TCP stream between two pods: the sink in to, the
// source in from, each this test binary re-executed in a role
// (netnstest.RunSink, RunSource).
type stream struct {
	id       int
	from, to *pod
	cfg      netnstest.StreamConfig
	start    time.Time
	end      time.Time
	// removed: the stream was ended on purpose because one of its pods
	// was about to go (node removal, pod churn).
	removed atomic.Bool
	procs   [2]*exec.Cmd
	mu      sync.Mutex
	outs    [2]*netnstest.SyncBuffer
	// Outcome, set when the stream has ended.
	err    string
	sent   netnstest.StreamResult
	got    netnstest.StreamResult
	intact bool
}

// streamRate and the stream lengths: a stream lasts long enough to live
// through a fault or two and is slow enough that a dozen of them leave
// the 2-core box to the agents.
const (
	streamRate  = 64 << 10
	streamChunk = 4 << 10
	// streamGrace is how long past its planned length a stream may take
	// (TCP's retransmission backoff after an outage, the source catching
	// up on its schedule) before its roles give up.
	streamGrace = 90 * time.Second
)

func (s *stream) String() string {
	return fmt.Sprintf("stream %d %s → %s (%s:%s)", s.id, s.from.key(), s.to.key(), s.to.IP, strings.Split(s.cfg.Addr, ":")[1])
}

// run drives the stream to its end and reports it on done.
func (s *stream) run(self string, done chan<- *stream) {
	defer func() { s.end = time.Now(); done <- s }()
	sink, sinkOut, err := s.startRole(self, 0, s.to, "tcpsink")
	if err != nil {
		s.err = err.Error()
		return
	}
	sinkDone := make(chan error, 1)
	go func() { sinkDone <- sink.Wait() }()
	// 20 s: starting a process through two nsenters on a loaded 2-core
	// box takes up to a few seconds.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(sinkOut.String(), netnstest.SinkListening) {
		select {
		case err := <-sinkDone:
			s.err = fmt.Sprintf("sink exited before it listened: %v %s", err, lastLine(sinkOut.String()))
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) || s.removed.Load() {
			s.kill()
			<-sinkDone
			s.err = "sink did not listen within 20s: " + lastLine(sinkOut.String())
			return
		}
	}
	source, srcOut, err := s.startRole(self, 1, s.from, "tcpsource")
	if err != nil {
		s.kill()
		<-sinkDone
		s.err = err.Error()
		return
	}
	srcErr := source.Wait()
	sinkErr := <-sinkDone
	if srcErr != nil || sinkErr != nil {
		s.err = fmt.Sprintf("source: %v %s; sink: %v %s", srcErr, lastLine(srcOut.String()), sinkErr, lastLine(sinkOut.String()))
		return
	}
	if err := lastJSON(srcOut.String(), &s.sent); err != nil {
		s.err = "source: " + err.Error()
		return
	}
	if err := lastJSON(sinkOut.String(), &s.got); err != nil {
		s.err = "sink: " + err.Error()
		return
	}
	s.intact = s.sent.Bytes == s.got.Bytes && s.sent.SHA256 == s.got.SHA256 && s.got.Bytes > 0
}

func (s *stream) startRole(self string, i int, in *pod, role string) (*exec.Cmd, *netnstest.SyncBuffer, error) {
	env, err := reexec.Env(rolePrefix, role, s.cfg)
	if err != nil {
		return nil, nil, err
	}
	argv := append(slices.Clone(in.argv), self)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out := &netnstest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed.Load() {
		return nil, nil, fmt.Errorf("%s: ended before its %s started", s, role)
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s in %s: %w", role, in.key(), err)
	}
	s.procs[i], s.outs[i] = cmd, out
	return cmd, out, nil
}

// kill ends both roles (by their process groups).
func (s *stream) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.procs {
		if c != nil && c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	}
}

// abandon ends the stream because one of its pods goes away.
func (s *stream) abandon() {
	s.removed.Store(true)
	s.kill()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func lastJSON(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return json.Unmarshal([]byte(lines[i]), v)
		}
	}
	return fmt.Errorf("no result line in %q", lastLine(out))
}

// capture is a tcpdump writing matching frames to a file.
type capture struct {
	cmd    *exec.Cmd
	stderr *netnstest.SyncBuffer
	done   chan struct{}
}

func startCapture(argv []string) (*capture, error) {
	c := &capture{cmd: exec.Command(argv[0], argv[1:]...), stderr: &netnstest.SyncBuffer{}, done: make(chan struct{})}
	c.cmd.Stdout, c.cmd.Stderr = io.Discard, c.stderr
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", argv, err)
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(c.stderr.String(), "listening on") {
		select {
		case <-c.done:
			return nil, fmt.Errorf("tcpdump exited: %s", c.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("tcpdump did not start listening within 15s: %s", c.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

// stop ends the capture (SIGINT flushes the file and prints the counts)
// and returns tcpdump's closing report.
func (c *capture) stop() string {
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	return c.stderr.String()
}
