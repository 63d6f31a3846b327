package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// The agent's resync period in the scale role, and how many of its full
// passes are measured: short enough that the measurement waits little for
// a tick, long enough that most signal-triggered passes fall between ticks
// (a full pass at 5000 Nodes takes ~0.1 s).
const (
	scaleResync  = 3 * time.Second
	resyncRounds = 3
)

// ScaleConfig configures the control-plane scale role.
type ScaleConfig struct {
	// Nodes in the cluster, this node included (peers = Nodes-1).
	Nodes int
	// Rounds of the no-op and one-change measurements.
	Rounds int
	// Interface for the agent's device (unique: its UAPI socket path is
	// global).
	Interface string
	// CPUProfile, if set, receives a pprof CPU profile of the measured
	// phases.
	CPUProfile string
}

// ScaleResult is what one scale run measured.
type ScaleResult struct {
	Nodes int `json:"nodes"`
	Peers int `json:"peers"`
	// Real is always true now: the role runs the agent as shipped (real
	// wireguard-go device through its UAPI socket, real dataplane).
	Real bool `json:"real_device"`
	// FullWall/FullCPU: the first reconcile after the cache synced, on an
	// empty device (adds every peer and route). Walls are the pass itself
	// (mesh.Status.Duration); CPU is the whole process's from the trigger
	// to the end of the agent's per-pass bookkeeping (memory limit,
	// metrics, the state file it rewrites on every pass).
	FullWallMS float64 `json:"full_reconcile_wall_ms"`
	FullCPUMS  float64 `json:"full_reconcile_cpu_ms"`
	// NoopWall/NoopCPU: medians over Rounds of a pass with nothing to do,
	// triggered through the node source's change signal (as any Node
	// event, e.g. a status heartbeat, triggers one); NoopIncremental
	// counts those that took the incremental path.
	NoopWallMS      float64 `json:"noop_wall_ms"`
	NoopCPUMS       float64 `json:"noop_cpu_ms"`
	NoopWrites      int     `json:"noop_device_writes"`
	NoopIncremental int     `json:"noop_incremental"`
	// ResyncWall: median over resyncRounds of the periodic full pass with
	// nothing to do (the reconciler's resync tick: reads the device,
	// re-applies the dataplane); ResyncWrites its device writes.
	ResyncWallMS float64 `json:"resync_wall_ms"`
	ResyncWrites int     `json:"resync_device_writes"`
	// Breakdown of a no-op pass (medians over Rounds, ms): listing the
	// Nodes from the informer cache, reading the device (UAPI get + parse),
	// Compute, and the dataplane's Apply of unchanged state.
	ListMS    float64 `json:"list_nodes_ms"`
	DeviceMS  float64 `json:"read_device_ms"`
	ComputeMS float64 `json:"compute_ms"`
	ApplyMS   float64 `json:"dataplane_apply_ms"`
	// ChangeWall: median of the reconcile pass that applied one changed
	// Node; ChangeApply: median from the API update to the device write,
	// with the informer and the agent's Run loop in between.
	ChangeWallMS  float64 `json:"change_reconcile_wall_ms"`
	ChangeApplyMS float64 `json:"change_to_applied_ms"`
	// ChangePeers is the largest number of peers any one-change write
	// touched (must be 1); ChangeWrites the device writes per change.
	ChangePeers  int `json:"change_peers_touched_max"`
	ChangeWrites int `json:"change_device_writes_max"`
	// ChangeIncremental counts the change passes that took the
	// incremental path (the others coincided with a resync tick).
	ChangeIncremental int `json:"change_incremental"`
	// RSS: before anything, after the agent started and its Node cache
	// synced (device up, no peers), after the full reconcile (all after a
	// GC and returning free memory to the OS).
	RSSStartMB  float64 `json:"rss_start_mb"`
	RSSSyncedMB float64 `json:"rss_synced_mb"`
	RSSPeersMB  float64 `json:"rss_peers_mb"`
	// KBPerPeerDevice is (RSSPeers-RSSSynced)/peers: device, routes and
	// reconciler state per peer. KBPerPeerTotal is (RSSPeers-RSSStart)
	// /peers and also counts the Node objects held by the informer cache
	// and by the in-process fake apiserver (an upper bound).
	KBPerPeerDevice float64 `json:"kb_per_peer_device"`
	KBPerPeerTotal  float64 `json:"kb_per_peer_total"`
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssMB() float64 {
	runtime.GC()
	debug.FreeOSMemory()
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	kb, _ := ParseStatusKB(string(raw), "VmRSS")
	return float64(kb) / 1024
}

// scaleNode is node i of the synthetic cluster: a /29 of 10.244.0.0/16
// (room for 8192 nodes), an endpoint on 198.51.100.0/24 with a distinct
// port. No packet is ever sent to it: peers without traffic or
// keepalive stay silent.
func scaleNode(i int, key wgtypes.Key) *v1.Node {
	pod := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i * 8 >> 8), byte(i * 8 & 0xff)}), 29)
	ip := fmt.Sprintf("198.51.100.%d", 10+i%240)
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              fmt.Sprintf("node-%05d", i),
			UID:               types.UID(fmt.Sprintf("uid-%05d", i)),
			CreationTimestamp: metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second)),
			Annotations: map[string]string{
				mesh.AnnotationPublicKey: key.PublicKey().String(),
				mesh.AnnotationEndpoint:  ip + ":" + strconv.Itoa(20000+i),
			},
		},
		Spec:   v1.NodeSpec{PodCIDR: pod.String(), PodCIDRs: []string{pod.String()}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}}},
	}
}

// runScaleRole measures one agent (mesh/agent, as shipped) against a
// cluster of cfg.Nodes Nodes served by client-go's fake clientset through
// the real kube node source (informer + lister), and prints a ScaleResult.
func runScaleRole(raw []byte) error {
	var cfg ScaleConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	res, err := measureScale(cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// gatedSource is the agent's kube node source with two harness handles:
// it reports not synced until opened, so that the "synced" measurements
// are taken before the first pass, and poke triggers a pass as a resync
// would. Node changes reach the agent through it unchanged.
type gatedSource struct {
	*kube.Source
	changed chan struct{}
	opened  atomic.Bool
}

func newGatedSource(src *kube.Source) *gatedSource {
	return &gatedSource{Source: src, changed: make(chan struct{}, 1)}
}

func (g *gatedSource) HasSynced() bool          { return g.opened.Load() && g.Source.HasSynced() }
func (g *gatedSource) Changed() <-chan struct{} { return g.changed }
func (g *gatedSource) open()                    { g.opened.Store(true); g.poke() }

func (g *gatedSource) poke() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

func (g *gatedSource) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-g.Source.Changed():
				g.poke()
			}
		}
	}()
	err := g.Source.Run(ctx)
	<-done
	return err
}

// scalePass is one reconcile pass as the agent reported it, with the
// process CPU time at that moment.
type scalePass struct {
	status mesh.Status
	cpu    time.Duration
}

// writeLog records the agent's device writes: when, and which peers.
type writeLog struct {
	mu     sync.Mutex
	at     []time.Time
	peers  []int
	keys   map[wgtypes.Key]bool
	lastAt map[wgtypes.Key]time.Time
}

func (w *writeLog) record(c wgtypes.Config) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.at = append(w.at, now)
	w.peers = append(w.peers, len(c.Peers))
	for _, p := range c.Peers {
		w.keys[p.PublicKey] = true
		w.lastAt[p.PublicKey] = now
	}
}

func (w *writeLog) reset() {
	w.mu.Lock()
	w.at, w.peers, w.keys, w.lastAt = nil, nil, map[wgtypes.Key]bool{}, map[wgtypes.Key]time.Time{}
	w.mu.Unlock()
}

// stats: the largest number of peers one write touched, every key
// touched, and when key was last written (zero if not).
func (w *writeLog) stats(key wgtypes.Key) (maxPeers int, keys map[wgtypes.Key]bool, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.peers {
		maxPeers = max(maxPeers, p)
	}
	return maxPeers, maps.Clone(w.keys), w.lastAt[key]
}

func measureScale(cfg ScaleConfig) (ScaleResult, error) {
	if cfg.Nodes < 2 || cfg.Nodes > 8000 {
		return ScaleResult{}, fmt.Errorf("scale: nodes %d not in 2..8000", cfg.Nodes)
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	res := ScaleResult{Nodes: cfg.Nodes, Peers: cfg.Nodes - 1, Real: true}
	res.RSSStartMB = rssMB()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "wgmesh-scale-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	selfKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return res, err
	}
	keyFile := filepath.Join(dir, "private.key")
	if err := wgdev.WriteKey(keyFile, selfKey); err != nil {
		return res, err
	}
	objs := make([]*v1.Node, cfg.Nodes)
	objs[0] = scaleNode(0, selfKey)
	for i := 1; i < cfg.Nodes; i++ {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return res, err
		}
		objs[i] = scaleNode(i, k)
	}
	client := fake.NewClientset()
	for _, n := range objs {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return res, err
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	src, err := kube.New(kube.Config{Client: client, NodeName: objs[0].Name, Logger: log})
	if err != nil {
		return res, err
	}
	gate := newGatedSource(src)
	passes := make(chan scalePass, 1024)
	writes := &writeLog{}
	writes.reset()
	a, err := agent.New(agent.Config{
		NodeName:       objs[0].Name,
		Interface:      cfg.Interface,
		ListenPort:     listenPort,
		KeyFile:        keyFile,
		MTU:            1420,
		CNIConfDir:     filepath.Join(dir, "net.d"),
		CNIDataDir:     filepath.Join(dir, "cni-data"),
		RunDir:         filepath.Join(dir, "run"),
		NetworkPolicy:  true,
		KubeClient:     client,
		NodeSource:     gate,
		Resync:         scaleResync,
		MetricsAddress: agent.DefaultMetricsAddress,
		Logger:         log,
		OnReconcile:    func(s mesh.Status) { passes <- scalePass{status: s, cpu: cpuNow()} },
		OnDeviceWrite:  writes.record,
	})
	if err != nil {
		return res, err
	}
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-runDone
	}()
	nextPass := func(what string) (scalePass, error) {
		select {
		case p := <-passes:
			return p, nil
		case err := <-runDone:
			runDone <- err
			return scalePass{}, fmt.Errorf("%s: agent stopped: %v", what, err)
		case <-time.After(2 * time.Minute):
			return scalePass{}, fmt.Errorf("%s: no reconcile pass within 2 minutes", what)
		}
	}

	// The agent is up (its device answers on the UAPI socket) and its
	// Node cache is full; the harness's own client reads the same device
	// for the breakdown below.
	var dev *wgdev.Client
	for deadline := time.Now().Add(2 * time.Minute); dev == nil || !src.HasSynced(); time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-runDone:
			runDone <- err
			return res, fmt.Errorf("agent stopped during start-up: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return res, errors.New("agent not up with a synced node cache within 2 minutes")
		}
		if dev == nil {
			if c, err := wgdev.Dial(cfg.Interface); err == nil {
				dev = c
				defer c.Close()
			}
		}
	}
	dp, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface, Logger: log})
	if err != nil {
		return res, err
	}
	res.RSSSyncedMB = rssMB()

	// Profiles: one of the full reconcile, one of everything after it.
	profile := func(suffix string) (stop func(), err error) {
		if cfg.CPUProfile == "" {
			return func() {}, nil
		}
		f, err := os.Create(strings.TrimSuffix(cfg.CPUProfile, ".pprof") + "-" + suffix + ".pprof")
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		return func() { pprof.StopCPUProfile(); f.Close() }, nil
	}

	// Full reconcile: every peer and route is new.
	stopProfile, err := profile("full")
	if err != nil {
		return res, err
	}
	c0 := cpuNow()
	gate.open()
	p, err := nextPass("full reconcile")
	if err != nil {
		return res, err
	}
	if p.status.Err != nil {
		return res, fmt.Errorf("full reconcile: %w", p.status.Err)
	}
	res.FullWallMS, res.FullCPUMS = Millis(p.status.Duration), Millis(p.cpu-c0)
	stopProfile()
	if stopProfile, err = profile("steady"); err != nil {
		return res, err
	}
	defer stopProfile()
	if len(p.status.Peers) != res.Peers {
		return res, fmt.Errorf("full reconcile: %d peers desired, want %d (excluded: %v)", len(p.status.Peers), res.Peers, p.status.Excluded)
	}
	res.RSSPeersMB = rssMB()
	res.KBPerPeerDevice = (res.RSSPeersMB - res.RSSSyncedMB) * 1024 / float64(res.Peers)
	res.KBPerPeerTotal = (res.RSSPeersMB - res.RSSStartMB) * 1024 / float64(res.Peers)

	// A late change signal from the informer's initial list may trigger
	// one more pass; let it run before measuring.
	st := p.status
	time.Sleep(500 * time.Millisecond)
	for len(passes) > 0 {
		st = (<-passes).status
	}

	// No-op passes.
	var noopWall, noopCPU []float64
	for range cfg.Rounds {
		c0 := cpuNow()
		gate.poke()
		p, err := nextPass("no-op reconcile")
		if err != nil {
			return res, err
		}
		if p.status.Err != nil {
			return res, fmt.Errorf("no-op reconcile: %w", p.status.Err)
		}
		noopWall = append(noopWall, Millis(p.status.Duration))
		if p.status.Incremental {
			res.NoopIncremental++
		}
		noopCPU = append(noopCPU, Millis(p.cpu-c0))
		res.NoopWrites += int(p.status.DeviceWrites - st.DeviceWrites)
		st = p.status
	}
	res.NoopWallMS, res.NoopCPUMS = Median(noopWall), Median(noopCPU)

	// The periodic resync: full passes on the reconciler's tick.
	var resyncWall []float64
	for len(resyncWall) < resyncRounds {
		p, err := nextPass("resync")
		if err != nil {
			return res, err
		}
		if p.status.Err != nil {
			return res, fmt.Errorf("resync: %w", p.status.Err)
		}
		res.ResyncWrites += int(p.status.DeviceWrites - st.DeviceWrites)
		st = p.status
		if !p.status.Incremental {
			resyncWall = append(resyncWall, Millis(p.status.Duration))
		}
	}
	res.ResyncWallMS = Median(resyncWall)

	// Where a no-op pass spends its time: the same steps one by one.
	var list, read, comp, dpApply []float64
	for range cfg.Rounds {
		t0 := time.Now()
		raws, err := src.Nodes()
		if err != nil {
			return res, err
		}
		t1 := time.Now()
		d, err := dev.Device()
		if err != nil {
			return res, err
		}
		t2 := time.Now()
		mesh.Compute(mesh.Input{Self: mesh.Self{Name: objs[0].Name, PublicKey: selfKey.PublicKey(), PodCIDRs: st.LocalPodCIDRs},
			Nodes: raws, Configured: mesh.ConfiguredFrom(d)})
		t3 := time.Now()
		if err := dp.Apply(ctx, mesh.DataplaneState{LocalPodCIDRs: st.LocalPodCIDRs, RemotePodCIDRs: st.Routes, MTU: 1420}); err != nil {
			return res, err
		}
		t4 := time.Now()
		list, read, comp, dpApply = append(list, Millis(t1.Sub(t0))), append(read, Millis(t2.Sub(t1))), append(comp, Millis(t3.Sub(t2))), append(dpApply, Millis(t4.Sub(t3)))
	}
	res.ListMS, res.DeviceMS, res.ComputeMS, res.ApplyMS = Median(list), Median(read), Median(comp), Median(dpApply)

	// One Node changes (its endpoint port): API update → informer →
	// signal → the agent's pass → device write.
	var changeWall, apply []float64
	for r := range cfg.Rounds {
		n := objs[1+r%(cfg.Nodes-1)]
		key := mustKey(n)
		writes.reset()
		t0 := time.Now()
		if err := bumpEndpoint(ctx, client, n, 1); err != nil {
			return res, err
		}
		for {
			p, err := nextPass("change of " + n.Name)
			if err != nil {
				return res, err
			}
			maxPeers, keys, at := writes.stats(key)
			if at.IsZero() {
				continue // a pass before the change reached the cache
			}
			if p.status.Err != nil {
				return res, fmt.Errorf("change reconcile: %w", p.status.Err)
			}
			changeWall = append(changeWall, Millis(p.status.Duration))
			apply = append(apply, Millis(at.Sub(t0)))
			res.ChangeWrites = max(res.ChangeWrites, int(p.status.DeviceWrites-st.DeviceWrites))
			res.ChangePeers = max(res.ChangePeers, maxPeers)
			if p.status.Incremental {
				res.ChangeIncremental++
			}
			st = p.status
			if len(keys) != 1 {
				return res, fmt.Errorf("change of %s touched %d peers", n.Name, len(keys))
			}
			break
		}
	}
	res.ChangeWallMS, res.ChangeApplyMS = Median(changeWall), Median(apply)
	return res, nil
}

func mustKey(n *v1.Node) wgtypes.Key {
	k, _ := wgtypes.ParseKey(n.Annotations[mesh.AnnotationPublicKey])
	return k
}

// bumpEndpoint moves the node's endpoint to another port, as a node whose
// agent restarted with a new listen port would.
func bumpEndpoint(ctx context.Context, c *fake.Clientset, n *v1.Node, by int) error {
	ep, err := netip.ParseAddrPort(n.Annotations[mesh.AnnotationEndpoint])
	if err != nil {
		return err
	}
	n.Annotations[mesh.AnnotationEndpoint] = netip.AddrPortFrom(ep.Addr(), ep.Port()+uint16(by)).String()
	_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	return err
}
