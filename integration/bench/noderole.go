package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// NodeRoleConfig configures the wgmesh node role: the agent as shipped
// (mesh/agent) with a node list file in place of the apiserver.
type NodeRoleConfig struct {
	Name       string
	Interface  string
	ListenPort int
	KeyFile    string
	// Spec is the node list; it carries every node's published key and
	// endpoint already (see filesource without an annotation directory).
	Spec         string
	CNIConfDir   string
	CNIDataDir   string
	ClusterCIDRs []netip.Prefix
	// RunDir holds the agent state file; empty means a "run" directory
	// beside KeyFile.
	RunDir string
	// MTU 0 detects it as the agent does (--mtu=auto).
	MTU int
	// Poll is how often the node list file is checked (default 20ms).
	Poll time.Duration
	// NoOffload opens the TUN without IFF_VNET_HDR.
	NoOffload bool
	// Resync is the reconciler's resync period (default the agent's).
	Resync time.Duration
	// Env is extra environment for the process (not passed to the role),
	// e.g. GOMEMLIMIT, which the agent's memory limit defers to.
	Env []string `json:"-"`
}

// nodeShutdown is printed by a node role that shut down cleanly.
const nodeShutdown = "bench node: clean shutdown"

// nodePoll is NodeRoleConfig.Poll's default: the node list file is the
// harness's apiserver, and its latency should not dominate convergence.
const nodePoll = 20 * time.Millisecond

// StartNodeRole runs the node role in n's namespace and stops it (SIGTERM,
// clean device close) in cleanup.
func StartNodeRole(t testing.TB, self string, n *Node, cfg NodeRoleConfig) {
	t.Helper()
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(filepath.Dir(cfg.KeyFile), "run")
	}
	env, err := roleEnv("node", cfg)
	if err != nil {
		t.Fatal(err)
	}
	env = append(env, cfg.Env...)
	sock := wgdev.SocketPath(cfg.Interface)
	t.Cleanup(func() {
		if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	})
	n.Daemon = n.NS.StartSession(t, n.Name+" wgmesh node", env, self)
	n.Pid = n.Daemon.Pid()
	t.Cleanup(func() {
		if err := n.Daemon.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("%s node: %v\n%s", n.Name, err, n.Daemon.Output())
		}
	})
}

// runNodeRole runs the agent (mesh/agent: fail closed, key, MTU, device
// with the state file's peers, reconciler with the dataplane and the
// conflist step, metrics on the agent's default address in the node's
// namespace, the memory limit) over the node list file until SIGTERM.
// NetworkPolicy is off: there is no apiserver to read policies from.
func runNodeRole(raw []byte) error {
	var cfg NodeRoleConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", cfg.Name)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A CPU profile of the whole life of the node, for looking into the
	// data path's cost (WGMESH_BENCH_NODE_PROFILE=<dir>).
	if dir := os.Getenv("WGMESH_BENCH_NODE_PROFILE"); dir != "" {
		f, err := os.Create(filepath.Join(dir, cfg.Name+"-"+cfg.Interface+".pprof"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
		// And the heap at its largest (sampled twice a second): where
		// the memory under bulk load is held.
		go writePeakHeap(ctx, filepath.Join(dir, cfg.Name+"-"+cfg.Interface+".heap.pprof"))
		// And the resident set beside the Go heap over time: what the
		// peak RSS is made of, and when it is reached.
		go writeMemTrace(ctx, filepath.Join(dir, cfg.Name+"-"+cfg.Interface+".mem.tsv"))
	}
	// WGMESH_BENCH_INFLIGHT overrides the device's in-flight bound, for
	// sweeping it (-bench.extras=env:WGMESH_BENCH_INFLIGHT=N; -1: none).
	var maxInflight int
	if v := os.Getenv("WGMESH_BENCH_INFLIGHT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("WGMESH_BENCH_INFLIGHT: %w", err)
		}
		maxInflight = n
	}
	poll := cfg.Poll
	if poll == 0 {
		poll = nodePoll
	}
	a, err := agent.New(agent.Config{
		NodeName:       cfg.Name,
		Interface:      cfg.Interface,
		ListenPort:     cfg.ListenPort,
		KeyFile:        cfg.KeyFile,
		MTU:            cfg.MTU,
		ClusterCIDRs:   cfg.ClusterCIDRs,
		CNIConfDir:     cfg.CNIConfDir,
		CNIDataDir:     cfg.CNIDataDir,
		RunDir:         cfg.RunDir,
		Resync:         cfg.Resync,
		MetricsAddress: agent.DefaultMetricsAddress,
		Logger:         log,
		NodeSource:     filesource.New(filesource.Config{Spec: cfg.Spec, Self: cfg.Name, Poll: poll, Logger: log}),
		NoOffload:      cfg.NoOffload,
		MaxInflight:    maxInflight,
	})
	if err != nil {
		return err
	}
	if err := a.Run(ctx); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, nodeShutdown)
	return nil
}

// writePeakHeap writes a heap profile to path whenever the heap's objects
// (live and not yet swept) reach a new high, 10% over the last one written,
// until ctx ends.
func writePeakHeap(ctx context.Context, path string) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var written uint64
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		metrics.Read(sample)
		if b := sample[0].Value.Uint64(); b > written+written/10 {
			written = b
			f, err := os.Create(path)
			if err != nil {
				return
			}
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
}

// writeMemTrace appends a line every 200 ms until ctx ends: seconds since
// start, VmRSS and VmHWM (MiB), the heap's objects, its goal, the bytes
// the runtime holds but has not returned to the OS, GC cycles and the
// in-flight bound's stalls (wgdev.InflightStalls).
func writeMemTrace(ctx context.Context, path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, "s\trss_mib\thwm_mib\theap_objects_mib\theap_goal_mib\theap_free_mib\tgc_cycles\tinflight_stalls")
	sample := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	start := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	const mib = 1 << 20
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var rss, hwm float64
		if st, err := os.ReadFile("/proc/self/status"); err == nil {
			rss, hwm = statusMiB(st, "VmRSS:"), statusMiB(st, "VmHWM:")
		}
		metrics.Read(sample)
		fmt.Fprintf(f, "%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\n", time.Since(start).Seconds(), rss, hwm,
			float64(sample[0].Value.Uint64())/mib, float64(sample[1].Value.Uint64())/mib,
			float64(sample[2].Value.Uint64())/mib, sample[3].Value.Uint64(), wgdev.InflightStalls())
	}
}

// statusMiB reads a "Key:   123 kB" line of /proc/<pid>/status in MiB.
func statusMiB(status []byte, key string) float64 {
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
