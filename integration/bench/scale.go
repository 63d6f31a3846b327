package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// ScaleConfig configures the control-plane scale role.
type ScaleConfig struct {
	// Nodes in the cluster, this node included (peers = Nodes-1).
	Nodes int
	// Rounds of the no-op and one-change measurements.
	Rounds int
	// Real uses a wireguard-go device on a real TUN (through its UAPI
	// socket, as the agent does) and the real dataplane; otherwise the
	// in-memory meshtest doubles, which isolate the core's own cost.
	Real bool
	// Interface for the real device (unique: its UAPI socket path is
	// global).
	Interface string
	// CPUProfile, if set, receives a pprof CPU profile of the measured
	// phases.
	CPUProfile string
}

// ScaleResult is what one scale run measured.
type ScaleResult struct {
	Nodes int  `json:"nodes"`
	Peers int  `json:"peers"`
	Real  bool `json:"real_device"`
	// FullWall/FullCPU: the first reconcile after the cache synced, on an
	// empty device (adds every peer and route).
	FullWallMS float64 `json:"full_reconcile_wall_ms"`
	FullCPUMS  float64 `json:"full_reconcile_cpu_ms"`
	// NoopWall/NoopCPU: medians over Rounds of a pass with nothing to do.
	NoopWallMS float64 `json:"noop_wall_ms"`
	NoopCPUMS  float64 `json:"noop_cpu_ms"`
	NoopWrites int     `json:"noop_device_writes"`
	// Breakdown of a no-op pass (medians over Rounds, ms): listing the
	// Nodes from the informer cache, reading the device (UAPI get + parse),
	// Compute, and the dataplane's Apply of unchanged state.
	ListMS    float64 `json:"list_nodes_ms"`
	DeviceMS  float64 `json:"read_device_ms"`
	ComputeMS float64 `json:"compute_ms"`
	ApplyMS   float64 `json:"dataplane_apply_ms"`
	// ChangeWall: median of one reconcile pass after one Node changed;
	// ChangeApply: median from the API update to the device write, with
	// the reconciler's Run loop and the informer in between.
	ChangeWallMS  float64 `json:"change_reconcile_wall_ms"`
	ChangeApplyMS float64 `json:"change_to_applied_ms"`
	// ChangePeers is the largest number of peers any one-change write
	// touched (must be 1); ChangeWrites the device writes per change.
	ChangePeers  int `json:"change_peers_touched_max"`
	ChangeWrites int `json:"change_device_writes_max"`
	// RSS: before anything, after the Node cache synced, after the full
	// reconcile (all after a GC and returning free memory to the OS).
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

// countingDevice counts the device writes and the peers each touched.
type countingDevice struct {
	inner  mesh.Device
	mu     sync.Mutex
	writes int
	peers  []int
	keys   map[wgtypes.Key]bool
	notify chan struct{}
}

func (d *countingDevice) Device() (*wgtypes.Device, error) { return d.inner.Device() }

func (d *countingDevice) ConfigureDevice(cfg wgtypes.Config) error {
	err := d.inner.ConfigureDevice(cfg)
	d.mu.Lock()
	d.writes++
	d.peers = append(d.peers, len(cfg.Peers))
	for _, p := range cfg.Peers {
		d.keys[p.PublicKey] = true
	}
	d.mu.Unlock()
	select {
	case d.notify <- struct{}{}:
	default:
	}
	return err
}

func (d *countingDevice) reset() {
	d.mu.Lock()
	d.writes, d.peers, d.keys = 0, nil, map[wgtypes.Key]bool{}
	d.mu.Unlock()
}

func (d *countingDevice) stats() (writes, maxPeers int, keys map[wgtypes.Key]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := 0
	for _, p := range d.peers {
		m = max(m, p)
	}
	return d.writes, m, d.keys
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

// runScaleRole measures one agent's reconciler against a cluster of
// cfg.Nodes Nodes served by client-go's fake clientset through the real
// kube node source (informer + lister), and prints a ScaleResult.
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

func measureScale(cfg ScaleConfig) (ScaleResult, error) {
	if cfg.Nodes < 2 || cfg.Nodes > 8000 {
		return ScaleResult{}, fmt.Errorf("scale: nodes %d not in 2..8000", cfg.Nodes)
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	res := ScaleResult{Nodes: cfg.Nodes, Peers: cfg.Nodes - 1, Real: cfg.Real}
	res.RSSStartMB = rssMB()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	selfKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
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
	go src.Run(ctx)
	for deadline := time.Now().Add(2 * time.Minute); !src.HasSynced(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return res, errors.New("node informer did not sync")
		}
	}

	var dev mesh.Device
	var dp mesh.Dataplane
	if cfg.Real {
		d, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: 1420, PrivateKey: selfKey, ListenPort: listenPort, Logger: log})
		if err != nil {
			return res, err
		}
		if err := d.Open(); err != nil {
			return res, err
		}
		defer d.Close()
		c, err := wgdev.Dial(cfg.Interface)
		if err != nil {
			return res, err
		}
		defer c.Close()
		p, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface, Logger: log})
		if err != nil {
			return res, err
		}
		dev, dp = c, p
	} else {
		dev, dp = meshtest.NewDevice(cfg.Interface), &meshtest.Dataplane{}
	}
	res.RSSSyncedMB = rssMB()
	cd := &countingDevice{inner: dev, keys: map[wgtypes.Key]bool{}, notify: make(chan struct{}, 1)}
	rec := mesh.New(mesh.Config{
		NodeName: objs[0].Name, PublicKey: selfKey.PublicKey(), ListenPort: listenPort, MTU: 1420,
		Source: src, Device: cd, Dataplane: dp, Logger: log, Resync: time.Hour,
	})
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
	drain(src.Changed())
	stopProfile, err := profile("full")
	if err != nil {
		return res, err
	}
	w0, c0 := time.Now(), cpuNow()
	if err := rec.Reconcile(ctx); err != nil {
		return res, fmt.Errorf("full reconcile: %w", err)
	}
	res.FullWallMS, res.FullCPUMS = Millis(time.Since(w0)), Millis(cpuNow()-c0)
	stopProfile()
	if stopProfile, err = profile("steady"); err != nil {
		return res, err
	}
	defer stopProfile()
	if st := rec.Status(); len(st.Peers) != res.Peers {
		return res, fmt.Errorf("full reconcile: %d peers desired, want %d (excluded: %v)", len(st.Peers), res.Peers, st.Excluded)
	}
	res.RSSPeersMB = rssMB()
	res.KBPerPeerDevice = (res.RSSPeersMB - res.RSSSyncedMB) * 1024 / float64(res.Peers)
	res.KBPerPeerTotal = (res.RSSPeersMB - res.RSSStartMB) * 1024 / float64(res.Peers)

	// No-op passes.
	var noopWall, noopCPU []float64
	cd.reset()
	for range cfg.Rounds {
		w0, c0 := time.Now(), cpuNow()
		if err := rec.Reconcile(ctx); err != nil {
			return res, fmt.Errorf("no-op reconcile: %w", err)
		}
		noopWall = append(noopWall, Millis(time.Since(w0)))
		noopCPU = append(noopCPU, Millis(cpuNow()-c0))
	}
	res.NoopWallMS, res.NoopCPUMS = Median(noopWall), Median(noopCPU)
	res.NoopWrites, _, _ = cd.stats()

	// Where a no-op pass spends its time: the same steps one by one.
	var list, read, comp, dpApply []float64
	st := rec.Status()
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

	// One Node changes (its endpoint port), then one pass.
	var changeWall []float64
	for r := range cfg.Rounds {
		n := objs[1+r%(cfg.Nodes-1)]
		if err := bumpEndpoint(ctx, client, n, 1); err != nil {
			return res, err
		}
		if err := waitNodeEndpoint(src, n); err != nil {
			return res, err
		}
		cd.reset()
		w0 := time.Now()
		if err := rec.Reconcile(ctx); err != nil {
			return res, fmt.Errorf("change reconcile: %w", err)
		}
		changeWall = append(changeWall, Millis(time.Since(w0)))
		writes, peers, keys := cd.stats()
		res.ChangeWrites, res.ChangePeers = max(res.ChangeWrites, writes), max(res.ChangePeers, peers)
		if !keys[mustKey(n)] || len(keys) != 1 {
			return res, fmt.Errorf("change of %s touched %d peers (its own: %v)", n.Name, len(keys), keys[mustKey(n)])
		}
	}
	res.ChangeWallMS = Median(changeWall)

	// The same through Run: API update → informer → signal → pass →
	// device write.
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- rec.Run(runCtx) }()
	time.Sleep(100 * time.Millisecond) // Run's first (no-op) pass
	var apply []float64
	for r := range cfg.Rounds {
		n := objs[1+(cfg.Rounds+r)%(cfg.Nodes-1)]
		cd.reset()
		drain(cd.notify)
		t0 := time.Now()
		if err := bumpEndpoint(ctx, client, n, 2); err != nil {
			stopRun()
			return res, err
		}
		deadline := time.After(time.Minute)
	wait:
		for {
			select {
			case <-cd.notify:
				if _, _, keys := cd.stats(); keys[mustKey(n)] {
					break wait
				}
			case <-deadline:
				stopRun()
				return res, fmt.Errorf("change of %s not applied within a minute", n.Name)
			}
		}
		apply = append(apply, Millis(time.Since(t0)))
		writes, peers, _ := cd.stats()
		res.ChangeWrites, res.ChangePeers = max(res.ChangeWrites, writes), max(res.ChangePeers, peers)
	}
	stopRun()
	if err := <-runDone; err != nil {
		return res, err
	}
	res.ChangeApplyMS = Median(apply)
	return res, nil
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
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

// waitNodeEndpoint waits until the source's cache shows n's endpoint.
func waitNodeEndpoint(src *kube.Source, n *v1.Node) error {
	want := n.Annotations[mesh.AnnotationEndpoint]
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		nodes, err := src.Nodes()
		if err != nil {
			return err
		}
		i := slices.IndexFunc(nodes, func(r mesh.RawNode) bool { return r.Name == n.Name })
		if i >= 0 && nodes[i].Annotations[mesh.AnnotationEndpoint] == want {
			return nil
		}
	}
	return fmt.Errorf("cache never showed %s's new endpoint", n.Name)
}
