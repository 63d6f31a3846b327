package e2e

import (
	"bufio"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

var (
	freshLabs     = flag.Int("freshpairs.labs", 2, "TestFreshPairs: fresh labs to measure (the reliability figures use 30)")
	freshParallel = flag.Int("freshpairs.parallel", 2, "TestFreshPairs: labs brought up at the same time")
	freshBurners  = flag.Int("freshpairs.burners", 2, "TestFreshPairs: CPU-burning goroutines running throughout, as load")
	freshBound    = flag.Duration("freshpairs.bound", 5*time.Second, "TestFreshPairs: the bound asserted (the issue's target is 2s; see freshPairTarget)")
	freshKeep     = flag.String("freshpairs.keep", "", "TestFreshPairs: diagnose: agents log at debug level (wireguard-go's device log), the underlay's WireGuard traffic is captured from before the agents start, and both are kept in this directory for every lab with a pair beyond the target")
)

// freshPairTarget is how soon after the later agent's first reconcile a
// pair must have a session on both sides. Of a fresh pair only the smaller
// key initiates, as it adds the peer, and again every 250 ms while no
// handshake completed; the larger key answers, or initiates itself after
// 1 s (mesh/wgdev quiet.go, greet.go); the rest is room for a loaded 2-core
// machine. It is the requirement (14.1); the measurement run asserts
// it (-freshpairs.bound=2s, docs/reliability.md). make test asserts
// -freshpairs.bound (5 s: below WireGuard's own 5 s retry, so a pair that
// needed one fails, and far below the 15 s that the handshake race's broken
// sessions lasted) and logs every pair.
const freshPairTarget = 2 * time.Second

// TestFreshPairs brings up fresh labs (several at once, with CPU burners
// beside them) and measures, for every pair of nodes, how long after the
// later of the two agents' first reconcile both sides have a session with
// each other (handshake times from the devices, nanosecond precision).
// Every pair must make it within -freshpairs.bound, and a single ping between
// every two pods must then succeed: no retry. The figures (p50/p99/max)
// are logged; docs/reliability.md has them for 30 labs:
//
//	flock /tmp/wgmesh-itest.lock go test -count=1 -run '^TestFreshPairs$' ./integration/e2e/ -v -args -freshpairs.labs=30 -freshpairs.bound=2s
func TestFreshPairs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var burners sync.WaitGroup
	for range *freshBurners {
		burners.Go(func() {
			var n uint64
			for ctx.Err() == nil {
				n++
			}
			_ = n
		})
	}
	defer burners.Wait()
	defer cancel()

	var (
		mu    sync.Mutex
		delay []time.Duration
	)
	for g := 0; g < *freshLabs; g += *freshParallel {
		t.Run(fmt.Sprintf("labs%d", g), func(t *testing.T) {
			for i := g; i < min(g+*freshParallel, *freshLabs); i++ {
				t.Run(fmt.Sprintf("lab%d", i), func(t *testing.T) {
					t.Parallel()
					d := measureFreshLab(t)
					mu.Lock()
					delay = append(delay, d...)
					mu.Unlock()
				})
			}
		})
	}
	if len(delay) == 0 {
		t.Fatal("no pair measured")
	}
	slices.Sort(delay)
	q := func(p float64) time.Duration {
		return delay[int(math.Ceil(p*float64(len(delay))))-1]
	}
	t.Logf("fresh pairs: %d pairs in %d labs, %d CPU burners: session on both sides after the later agent's first reconcile: p50 %s, p99 %s, max %s",
		len(delay), *freshLabs, *freshBurners, q(0.50).Round(time.Millisecond), q(0.99).Round(time.Millisecond), delay[len(delay)-1].Round(time.Millisecond))
}

// measureFreshLab brings up a 3-node lab and returns, per pair, the time
// from the later agent's first reconcile to a session on both sides (0 if
// the session was there before).
func measureFreshLab(t *testing.T) []time.Duration {
	setup := labtest.Setup{Prefix: "e", Opts: lab.UpOptions{Nodes: 3, Pods: 1}, Limit: 5 * time.Minute}
	var diag *freshDiag
	if *freshKeep != "" {
		diag = &freshDiag{}
		setup.AgentArgs = []string{"--log-level=debug"}
		setup.BeforeUp = func(name, stateDir string) { diag.start(t, name, stateDir) }
	}
	l := upLabWith(t, setup)
	slow := false
	if diag != nil {
		// Registered after upLab's clean-up, so it runs before Down.
		t.Cleanup(func() { diag.keep(t, slow || t.Failed(), *freshKeep) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := l.State()
	names := st.NodeNames()

	firstRec := map[string]time.Time{}
	pub := map[string]wgtypes.Key{}
	for _, n := range names {
		ts, err := firstReconcile(l.AgentLog(n))
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		firstRec[n] = ts
	}
	sock := func(n string) string { return filepath.Join(st.Nodes[n].Dir, "run-wireguard", "wgmesh0.sock") }

	// hs[x][y]: when x first showed a completed handshake with y.
	hs := map[string]map[string]time.Time{}
	done := func() bool {
		for _, x := range names {
			self, peers, err := uapiHandshakes(sock(x))
			if err != nil {
				t.Logf("%s: %v", x, err)
				return false
			}
			pub[x] = self
			if hs[x] == nil {
				hs[x] = map[string]time.Time{}
			}
			for _, y := range names {
				if k, ok := pub[y]; ok && y != x {
					if ts := peers[k]; !ts.IsZero() {
						if _, seen := hs[x][y]; !seen {
							hs[x][y] = ts
						}
					}
				}
			}
		}
		for _, x := range names {
			if len(hs[x]) < len(names)-1 {
				return false
			}
		}
		return true
	}
	// Polling only reads timestamps the devices recorded, so its interval
	// does not enter the figures; 30 s is generous for a bound of 2 s.
	if _, ok := lab.WaitFor(ctx, 30*time.Second, 50*time.Millisecond, done); !ok {
		t.Fatalf("not every pair had a session within 30s: %v", hs)
	}

	var out []time.Duration
	for i, x := range names {
		for _, y := range names[i+1:] {
			ready := later(firstRec[x], firstRec[y])
			session := later(hs[x][y], hs[y][x])
			d := max(session.Sub(ready), 0)
			if d > freshPairTarget {
				slow = true
				t.Logf("%s<->%s: session on both sides %s after the later agent's first reconcile, beyond the %s target",
					x, y, d.Round(time.Millisecond), freshPairTarget)
			}
			if d > *freshBound {
				t.Errorf("%s<->%s: session on both sides %s after the later agent's first reconcile, want at most %s",
					x, y, d.Round(time.Millisecond), *freshBound)
			}
			out = append(out, d)
		}
	}
	t.Logf("pairs: %v", out)
	// And the pods see it: one ping each, no retry.
	requireMatrixOnce(t, ctx, l)
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// requireMatrixOnce fails t unless every pod reaches every pod with the
// first ping.
func requireMatrixOnce(t *testing.T, ctx context.Context, l *lab.Lab) {
	t.Helper()
	m := l.PingMatrix(ctx, 1)
	if f := m.Failures(); len(f) > 0 {
		var b strings.Builder
		m.Print(&b)
		t.Fatalf("%d of %d pod pairs unreachable with one ping:\n%s", len(f), len(m.Pods)*len(m.Pods), b.String())
	}
}

// firstReconcile returns the time of the agent's first-reconcile log line.
func firstReconcile(logPath string) (time.Time, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="`+agent.MsgFirstReconcile+`"`) {
			continue
		}
		v, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		return time.Parse(time.RFC3339Nano, v)
	}
	return time.Time{}, fmt.Errorf("no %q line in %s", agent.MsgFirstReconcile, logPath)
}

// uapiHandshakes asks a device over its UAPI socket for its public key and
// every peer's last handshake time.
func uapiHandshakes(sock string) (wgtypes.Key, map[wgtypes.Key]time.Time, error) {
	var self wgtypes.Key
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return self, nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		return self, nil, err
	}
	peers := map[wgtypes.Key]time.Time{}
	var cur wgtypes.Key
	var sec, nsec int64
	flush := func() {
		if cur != (wgtypes.Key{}) && (sec != 0 || nsec != 0) {
			peers[cur] = time.Unix(sec, nsec)
		}
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() && sc.Text() != "" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "private_key", "public_key":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != wgtypes.KeyLen {
				return self, nil, fmt.Errorf("uapi %s: bad %s", sock, k)
			}
			key, _ := wgtypes.NewKey(b)
			if k == "private_key" {
				self = key.PublicKey()
				continue
			}
			flush()
			cur, sec, nsec = key, 0, 0
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	flush()
	return self, peers, sc.Err()
}

// freshDiag captures a fresh lab's underlay WireGuard traffic from before
// its agents start, and keeps it with the agents' logs when asked.
type freshDiag struct {
	name, stateDir, pcap string
	mu                   sync.Mutex
	cmd                  *exec.Cmd
	stopped              bool
	started              chan struct{}
}

// start waits (in the background) for the lab's underlay bridge and runs
// tcpdump on it. The control plane takes seconds to start before the
// first agent, so the capture misses no handshake.
func (d *freshDiag) start(t *testing.T, name, stateDir string) {
	d.name, d.stateDir, d.started = name, stateDir, make(chan struct{})
	d.pcap = filepath.Join(os.TempDir(), "wgmesh-freshpairs-"+name+".pcap")
	ns := "wgl-" + name + "-ul"
	go func() {
		defer close(d.started)
		for range 600 {
			if exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", "br0").Run() == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.stopped {
			return
		}
		argv := labtest.Tcpdump([]string{"ip", "netns", "exec", ns}, "-i", "br0", "-s", "256", "-w", d.pcap, "udp", "or", "arp")
		cmd := exec.Command(argv[0], argv[1:]...)
		if err := cmd.Start(); err != nil {
			t.Logf("diagnosis: start tcpdump: %v", err)
			return
		}
		d.cmd = cmd
	}()
}

// keep stops the capture and, if keep is set, copies the pcap and the
// lab's logs to dir/<lab>/.
func (d *freshDiag) keep(t *testing.T, keep bool, dir string) {
	<-d.started
	d.mu.Lock()
	d.stopped = true
	if d.cmd != nil {
		_ = d.cmd.Process.Signal(syscall.SIGINT)
		_ = d.cmd.Wait()
	}
	d.mu.Unlock()
	defer os.Remove(d.pcap)
	if !keep {
		return
	}
	out := filepath.Join(dir, d.name)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Logf("diagnosis: %v", err)
		return
	}
	files, _ := filepath.Glob(filepath.Join(d.stateDir, "logs", "*"))
	files = append(files, d.pcap)
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			_ = os.WriteFile(filepath.Join(out, filepath.Base(f)), b, 0o644)
		}
	}
	t.Logf("diagnosis: kept the underlay capture and the logs in %s", out)
}
