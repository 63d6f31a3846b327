package bench

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// NodeRoleConfig configures the wgmesh node role: the agent's data path
// wiring (cmd/wgmesh-agent's run) with a node list file in place of the
// apiserver.
type NodeRoleConfig struct {
	Name         string
	Interface    string
	ListenPort   int
	KeyFile      string
	Spec         string
	CNIConfDir   string
	CNIDataDir   string
	ClusterCIDRs []netip.Prefix
	// MTU 0 detects it as the agent does (--mtu=auto).
	MTU int
	// Poll is how often the node list file is checked (default 20ms).
	Poll time.Duration
	// NoOffload opens the TUN without IFF_VNET_HDR.
	NoOffload bool
	// Resync is the reconciler's resync period (default the agent's).
	Resync time.Duration
	// Env is extra environment for the process (not passed to the role).
	Env []string `json:"-"`
}

// nodeShutdown is printed by a node role that shut down cleanly.
const nodeShutdown = "bench node: clean shutdown"

// StartNodeRole runs the node role in n's namespace and stops it (SIGTERM,
// clean device close) in cleanup.
func StartNodeRole(t testing.TB, self string, n *Node, cfg NodeRoleConfig) {
	t.Helper()
	env, err := roleEnv("node", cfg)
	if err != nil {
		t.Fatal(err)
	}
	env = append(env, cfg.Env...)
	sock := filepath.Join("/var/run/wireguard", cfg.Interface+".sock")
	t.Cleanup(func() {
		if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cleanup: %v", err)
		}
	})
	n.Daemon = n.NS.Start(t, n.Name+" wgmesh node", env, self)
	n.Pid = n.Daemon.Pid()
	t.Cleanup(func() {
		if err := n.Daemon.Stop(syscall.SIGTERM, 10*time.Second); err != nil {
			t.Errorf("%s node: %v\n%s", n.Name, err, n.Daemon.Output())
		}
	})
}

// runNodeRole is cmd/wgmesh-agent's run() minus the kube client, metrics
// server, state file and peer restore: dataplane Prepare (fail closed) →
// key → MTU → wgdev device → wgctrl → reconciler with the dataplane and
// the conflist step, in that order and with the same packages, until
// SIGTERM.
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
	}
	dp, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface, ClusterCIDRs: cfg.ClusterCIDRs, Logger: log})
	if err != nil {
		return err
	}
	if err := dp.Prepare(ctx); err != nil {
		return fmt.Errorf("fail-closed setup: %w", err)
	}
	key, _, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	mtu := cfg.MTU
	if mtu == 0 {
		if mtu, err = dataplane.AutoMTU(cfg.Interface, dataplane.DefaultBridge); err != nil {
			return fmt.Errorf("detect mtu: %w", err)
		}
	}
	planes := dataplane.Multi{dp, dataplane.Func(func(_ context.Context, s mesh.DataplaneState) error {
		if len(s.LocalPodCIDRs) == 0 {
			return nil
		}
		_, err := cni.WriteConflist(cfg.CNIConfDir, cni.NodeConf{MTU: s.MTU, PodCIDRs: s.LocalPodCIDRs, DataDir: cfg.CNIDataDir})
		return err
	})}
	dev, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: mtu, PrivateKey: key, ListenPort: cfg.ListenPort,
		NoOffload: cfg.NoOffload, Logger: log})
	if err != nil {
		return err
	}
	if err := dev.Open(); err != nil {
		return err
	}
	defer dev.Close()
	client, err := wgdev.Dial(cfg.Interface)
	if err != nil {
		return err
	}
	defer client.Close()
	src := &fileSource{path: cfg.Spec, self: cfg.Name, poll: cfg.Poll, changed: make(chan struct{}, 1)}
	if src.poll == 0 {
		src.poll = 20 * time.Millisecond
	}
	rec := mesh.New(mesh.Config{
		NodeName:   cfg.Name,
		PublicKey:  key.PublicKey(),
		ListenPort: cfg.ListenPort,
		MTU:        mtu,
		Source:     src,
		Device:     client,
		Dataplane:  planes,
		Logger:     log,
		Resync:     cfg.Resync,
	})
	go src.run(ctx)
	recErr := make(chan error, 1)
	go func() { recErr <- rec.Run(ctx) }()
	select {
	case <-dev.Done():
		return fmt.Errorf("device stopped: %w", dev.Err())
	case err := <-recErr:
		if err != nil {
			return err
		}
	}
	dev.Close()
	fmt.Fprintln(os.Stderr, nodeShutdown)
	return nil
}

// fileSource is a mesh.NodeSource over a JSON file of RawNodes that the
// harness rewrites (atomically) to add or change nodes. The file already
// carries every node's published annotations, so Publish only records.
type fileSource struct {
	path    string
	self    string
	poll    time.Duration
	changed chan struct{}

	mu        sync.Mutex
	synced    bool
	published map[string]string
}

func (s *fileSource) run(ctx context.Context) {
	var last [32]byte
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		if raw, err := os.ReadFile(s.path); err == nil {
			if sum := sha256.Sum256(raw); sum != last {
				last = sum
				s.mu.Lock()
				s.synced = true
				s.mu.Unlock()
				select {
				case s.changed <- struct{}{}:
				default:
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *fileSource) Nodes() ([]mesh.RawNode, error) {
	raw, err := os.ReadFile(s.path)
	if err != nil {
		return nil, err
	}
	var nodes []mesh.RawNode
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("node list %s: %w", s.path, err)
	}
	return nodes, nil
}

func (s *fileSource) Changed() <-chan struct{} { return s.changed }

func (s *fileSource) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func (s *fileSource) Publish(_ context.Context, ann map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.published = ann
	return nil
}

func (s *fileSource) Warn(node, reason, message string) {
	fmt.Fprintf(os.Stderr, "warning event on %s: %s: %s\n", node, reason, message)
}
