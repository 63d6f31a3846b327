// Package agent assembles wgmesh's node agent: the one start-up order, run
// by cmd/wgmesh-agent (which only parses its configuration into a Config)
// and by every integration harness (which swaps in a file-backed node
// source and little else), so that what the harnesses test and measure is
// the agent as shipped.
//
// Run's order, each step for a reason:
//  1. the memory limit (before anything allocates much);
//  2. fail closed (dataplane Prepare): from here on no packet to or from a
//     cluster range leaves in the clear, whatever happens next;
//  3. the private key, then the MTU;
//  4. the kube client and the node source;
//  5. the WireGuard device on the persistent TUN, with the previous run's
//     peers from the state file, so a restarted agent carries traffic
//     before it has read a single Node (their nodes' keys go to the
//     reconciler: incumbency in a conflict survives the restart); then the
//     wgctrl client on its UAPI socket;
//  6. metrics, the state file writer and the reconciler;
//  7. the goroutines: metrics server, node source, reconciler,
//     NetworkPolicy engine.
//
// On cancellation the goroutines are stopped and waited for, then the
// wgctrl client and the device are closed. The TUN, its routes, the bridge
// and the firewall rules stay: pod traffic to other nodes is dropped, never
// sent in the clear, until the next agent re-attaches.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/mesh/policy"
	policykube "github.com/wgmesh/wgmesh/mesh/policy/kube"
	policynft "github.com/wgmesh/wgmesh/mesh/policy/nft"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// Progress lines, logged at info level; harnesses wait for them.
const (
	// MsgFailClosed: Prepare is done, the node is fail-closed.
	MsgFailClosed = "fail-closed guard and routes in place"
	// MsgFirstReconcile: the first reconcile pass finished.
	MsgFirstReconcile = "first reconcile done"
	// MsgShuttingDown: Run was cancelled and is closing the device.
	MsgShuttingDown = "shutting down: closing the wireguard device; the interface, routes, bridge and firewall rules stay"
)

// Agent is one node agent. Create it with New; Run it once.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	host host
}

// New fills cfg's defaults and validates it. It does no I/O.
func New(cfg Config) (*Agent, error) {
	cfg.CNIBridge = cmp.Or(cfg.CNIBridge, dataplane.DefaultBridge)
	if len(cfg.ClusterCIDRs) == 0 {
		cfg.ClusterCIDRs = dataplane.DefaultClusterCIDRs
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, log: log, host: realHost()}, nil
}

// host is the assembly's contact with the machine: the kernel, the
// environment and the API server. Run uses the real ones; this package's
// tests put recording fakes in their place to check the order.
type host struct {
	lookupEnv  func(string) (string, bool)
	system     dataplane.System // nil: the running kernel
	autoMTU    func(exclude ...string) (int, error)
	kubeClient func(kubeconfig string) (kubernetes.Interface, error)
	// dynamicClient, for the Peer objects; nil: no external peers.
	dynamicClient func(kubeconfig string) (dynamic.Interface, error)
	openDevice    func(wgdev.Config) (device, error)
	dial          func(name string) (deviceClient, error)
	policy        func(policynft.Config) (policyTables, error)
	listen        func(network, address string) (net.Listener, error)
}

// device is the running wireguard-go device (*wgdev.Device).
type device interface {
	Done() <-chan struct{}
	Err() error
	Close() error
	// Greet starts handshakes with peers just added (wgdev.Device.Greet).
	Greet(keys ...wgtypes.Key)
	// GreetSilent greets those of the peers without a session
	// (wgdev.Device.GreetSilent).
	GreetSilent(keys ...wgtypes.Key)
}

// deviceClient talks to the device over its UAPI socket (*wgdev.Client).
type deviceClient interface {
	mesh.Device
	Close() error
}

// policyTables enforce NetworkPolicies (*policynft.Dataplane).
type policyTables interface {
	policy.Dataplane
	Remove() error
}

func realHost() host {
	return host{
		lookupEnv:  os.LookupEnv,
		autoMTU:    dataplane.NewMTUDetector().Detect, // asked every few seconds
		kubeClient: kubeClient,
		dynamicClient: func(kubeconfig string) (dynamic.Interface, error) {
			return kube.NewDynamicClient(kube.ClientConfig{Kubeconfig: kubeconfig, UserAgent: kube.DefaultComponent})
		},
		openDevice: func(c wgdev.Config) (device, error) {
			d, err := wgdev.New(c)
			if err != nil {
				return nil, err
			}
			if err := d.Open(); err != nil {
				return nil, err
			}
			return d, nil
		},
		dial:   func(name string) (deviceClient, error) { return wgdev.Dial(name) },
		policy: func(c policynft.Config) (policyTables, error) { return policynft.New(c) },
		listen: net.Listen,
	}
}

// Run starts the agent in the order the package comment gives and runs it
// until ctx is cancelled (nil), the device fails or the reconciler stops
// (an error). Any failed start-up step returns its error, after undoing
// what Run had opened (but never the fail-closed state).
func (a *Agent) Run(ctx context.Context) error {
	cfg, log := a.cfg, a.log
	limit := newMemoryLimiter(cfg.MemoryLimit == MemoryLimitAuto, cfg.MaxInflight, a.host.lookupEnv)
	// Closed after the first reconcile: start-up is over (memoryTrimmer).
	settled := make(chan struct{})

	dp, err := dataplane.New(dataplane.Config{
		WGInterface:  cfg.Interface,
		Bridge:       cfg.CNIBridge,
		ClusterCIDRs: cfg.ClusterCIDRs,
		Logger:       log,
		System:       a.host.system,
	})
	if err != nil {
		return err
	}
	if err := dp.Prepare(ctx); err != nil {
		return fmt.Errorf("fail-closed setup: %w", err)
	}
	log.Info(MsgFailClosed, "cluster_cidrs", cfg.ClusterCIDRs)

	key, created, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	if created {
		log.Info("generated a new private key", "key_file", cfg.KeyFile)
	}
	pub := key.PublicKey()

	mtu := cfg.MTU
	var detectMTU func() (int, error) // nil: a configured MTU stays
	if mtu == 0 {
		detectMTU = func() (int, error) { return a.host.autoMTU(cfg.Interface, cfg.CNIBridge) }
		if mtu, err = detectMTU(); err != nil {
			return fmt.Errorf("detect mtu: %w", err)
		}
		log.Info("mtu detected", "mtu", mtu)
	}

	client, source, err := a.nodeSource()
	if err != nil {
		return err
	}
	planes := dataplane.Multi{dp, cniWriter(cfg, log)}

	restored := restore(cfg, log)
	// The runtime's memory is the agent's to steer (as the limit) only
	// with MemoryLimitAuto; nil otherwise.
	var trimmer *memoryTrimmer
	if cfg.MemoryLimit == MemoryLimitAuto {
		trimmer = newMemoryTrimmer(log)
		// The device's big allocations (wireguard-go's GRO tables, 1.8 MiB,
		// and its read batches) stay untouched until packets flow, but only
		// if they land on pages the runtime knows are zero: pages it
		// returned to the kernel are, while start-up's freed garbage has
		// to be cleared first, which makes them resident on an idle node.
		trimmer.trim("before the device")
	}
	dev, err := a.host.openDevice(wgdev.Config{Name: cfg.Interface, MTU: mtu, PrivateKey: key, ListenPort: cfg.ListenPort,
		NoOffload: cfg.NoOffload, MaxInflight: cfg.MaxInflight, Logger: log, Peers: restored.Peers})
	if err != nil {
		return err
	}
	defer dev.Close()
	wg, err := a.host.dial(cfg.Interface)
	if err != nil {
		return err
	}
	defer wg.Close()
	// The reconciler reads and writes the device in-process where the
	// device offers it: at thousands of peers the UAPI socket round trip
	// was most of a full pass. Metrics and wg(8) keep using the socket.
	var rw mesh.Device = wg
	if l, ok := dev.(interface{ Local() *wgdev.Local }); ok {
		rw = l.Local()
	}
	// Every write that adds a peer greets it at once (see wgdev's Greet).
	var recDevice mesh.Device = greetingDevice{rw, dev}
	if cfg.OnDeviceWrite != nil {
		recDevice = observedDevice{recDevice, cfg.OnDeviceWrite}
	}

	prom := metrics.New(metrics.Config{Device: wg, Logger: log, DeviceUp: func() error {
		select {
		case <-dev.Done():
			if err := dev.Err(); err != nil {
				return err
			}
			return errors.New("wireguard device stopped")
		default:
			return nil
		}
	}})
	state := agentstate.NewWriter(agentstate.WriterConfig{Path: agentstate.Path(cfg.RunDir), Logger: log,
		Info: agentstate.Info{Node: cfg.NodeName, Interface: cfg.Interface, PublicKey: pub, ListenPort: cfg.ListenPort}})
	rec := mesh.New(mesh.Config{
		NodeName:         cfg.NodeName,
		PublicKey:        pub,
		Keys:             wgdev.KeyFile(cfg.KeyFile), // key rotation (wgmesh.io/rotate-key)
		ListenPort:       cfg.ListenPort,
		EndpointOverride: cfg.Endpoint,
		DefaultKeepalive: cfg.Keepalive,
		MTU:              mtu,
		DetectMTU:        detectMTU,
		Source:           source,
		Device:           recDevice,
		Dataplane:        planes,
		Resolver:         net.DefaultResolver,
		Logger:           log,
		Resync:           cfg.Resync,
		KnownKeys:        restored.KnownKeys,
		OnReconcile: func(s mesh.Status) {
			limit.observe(len(s.Peers))
			prom.Observe(s)
			state.Observe(s)
			if s.Reconciles == 1 {
				log.Info(MsgFirstReconcile, "peers", len(s.Peers), "took", s.Duration)
				close(settled)
			}
			if cfg.OnReconcile != nil {
				cfg.OnReconcile(s)
			}
		},
	})

	// On return: stop the goroutines and wait for them, then (deferred
	// earlier, so later) close wgctrl and the device: the reconciler never
	// talks to a closed device.
	ctx, cancel := context.WithCancel(ctx)
	var wgs sync.WaitGroup
	defer func() {
		cancel()
		wgs.Wait()
	}()

	if cfg.MetricsAddress != "" {
		srv := &http.Server{Addr: cfg.MetricsAddress, Handler: prom.Handler(), ReadHeaderTimeout: 5 * time.Second}
		ln, err := a.host.listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.MetricsAddress, err)
		}
		wgs.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("probe server stopped", "err", err)
			}
		})
		wgs.Go(func() {
			<-ctx.Done()
			shutdownCtx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			srv.Shutdown(shutdownCtx)
		})
	}
	wgs.Go(func() {
		if err := source.Run(ctx); err != nil {
			log.Error("node source stopped", "err", err)
		}
	})
	recErr := make(chan error, 1)
	wgs.Go(func() { recErr <- rec.Run(ctx) })
	if trimmer != nil {
		wgs.Go(func() { trimmer.run(ctx, settled) })
	}
	if err := a.startNetworkPolicy(ctx, client, &wgs); err != nil {
		return fmt.Errorf("network policy: %w", err)
	}

	log.Info("agent running", "interface", cfg.Interface, "listen_port", cfg.ListenPort,
		"public_key", pub.String(), "mtu", mtu)
	select {
	case <-ctx.Done():
		log.Info(MsgShuttingDown)
		return nil
	case <-dev.Done():
		return fmt.Errorf("wireguard device failed: %w", dev.Err())
	case err := <-recErr:
		if err != nil {
			return err
		}
		return errors.New("reconciler stopped unexpectedly")
	}
}

// nodeSource returns the kube client (nil when none is needed) and the
// node source: the injected one, or the Node informer over the client.
func (a *Agent) nodeSource() (kubernetes.Interface, NodeSource, error) {
	cfg := a.cfg
	client := cfg.KubeClient
	if client == nil && (cfg.NodeSource == nil || cfg.NetworkPolicy) {
		var err error
		if client, err = a.host.kubeClient(cfg.Kubeconfig); err != nil {
			return nil, nil, err
		}
	}
	if cfg.NodeSource != nil {
		return client, cfg.NodeSource, nil
	}
	// External peers (Peer objects) come through the same source, over a
	// dynamic client from the same credentials; an injected client has
	// none unless one is given too.
	dyn := cfg.DynamicClient
	if dyn == nil && cfg.KubeClient == nil && a.host.dynamicClient != nil {
		var err error
		if dyn, err = a.host.dynamicClient(cfg.Kubeconfig); err != nil {
			return nil, nil, err
		}
	}
	source, err := kube.New(kube.Config{Client: client, NodeName: cfg.NodeName, Logger: a.log, Dynamic: dyn})
	if err != nil {
		return nil, nil, err
	}
	return client, source, nil
}

// kubeClient: the given kubeconfig, else the pod's service account.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	return kube.NewClient(kube.ClientConfig{Kubeconfig: kubeconfig, UserAgent: kube.DefaultComponent})
}

// startNetworkPolicy wires the NetworkPolicy engine (pod, namespace and
// policy informers → compiler → nftables) and runs it on wgs until ctx
// ends. With NetworkPolicy off it removes the policy tables instead, so
// that switching enforcement off really opens traffic again.
func (a *Agent) startNetworkPolicy(ctx context.Context, client kubernetes.Interface, wgs *sync.WaitGroup) error {
	cfg, log := a.cfg, a.log
	dp, err := a.host.policy(policynft.Config{Bridge: cfg.CNIBridge, Logger: log})
	if err != nil {
		return err
	}
	if !cfg.NetworkPolicy {
		if err := dp.Remove(); err != nil {
			return fmt.Errorf("remove network policy tables: %w", err)
		}
		log.Info("network policy enforcement is off")
		return nil
	}
	src, err := policykube.New(policykube.Config{Client: client, NodeName: cfg.NodeName, Logger: log})
	if err != nil {
		return err
	}
	ctl := policy.New(policy.Config{NodeName: cfg.NodeName, Source: src, Dataplane: dp, Logger: log})
	wgs.Go(func() {
		if err := src.Run(ctx); err != nil {
			log.Error("policy source stopped", "err", err)
		}
	})
	wgs.Go(func() {
		if err := ctl.Run(ctx); err != nil {
			log.Error("network policy controller stopped", "err", err)
		}
	})
	return nil
}

// cniWriter is the dataplane step that (re)writes the CNI conflist whenever
// the node's podCIDRs or MTU change (cni.WriteConflist only writes when the
// content differs). Without podCIDRs there is no conflist: its presence tells
// the runtime the pod network is ready.
func cniWriter(cfg Config, log *slog.Logger) mesh.Dataplane {
	return dataplane.Func(func(_ context.Context, s mesh.DataplaneState) error {
		if len(s.LocalPodCIDRs) == 0 {
			return nil
		}
		changed, err := cni.WriteConflist(cfg.CNIConfDir, cni.NodeConf{
			Bridge:   cfg.CNIBridge,
			MTU:      s.MTU,
			PodCIDRs: s.LocalPodCIDRs,
			DataDir:  cfg.CNIDataDir,
		})
		if err != nil {
			return err
		}
		if changed {
			log.Info("wrote CNI config", "path", filepath.Join(cfg.CNIConfDir, cni.ConflistName),
				"pod_cidrs", s.LocalPodCIDRs, "mtu", s.MTU)
		}
		return nil
	})
}

// restore returns what the previous run of the agent left in its state
// file: its peers, so that a restarted agent carries traffic before it has
// read the node list, and the node each peer's key belonged to, so that
// incumbency in a conflict survives the restart. Any problem just means
// starting without them.
func restore(cfg Config, log *slog.Logger) agentstate.Restored {
	path := agentstate.Path(cfg.RunDir)
	r, err := agentstate.Restore(path, cfg.NodeName, cfg.Interface)
	switch {
	case err == nil:
		log.Info("restoring the previous run's peers", "state_file", path, "restored_peers", len(r.Peers))
		return r
	case errors.Is(err, agentstate.ErrNoState):
		return agentstate.Restored{}
	default:
		log.Warn("not restoring peers from the state file", "err", err)
		return agentstate.Restored{}
	}
}

// greetingDevice has the device greet every peer a write added with an
// endpoint: a session then exists before the first pod packet needs one,
// and the device repairs first handshakes that crossed (see wgdev.Greet).
// Two more cases would otherwise leave a peer to WireGuard's own
// initiation on the first packet (where crossings cost 5 s and more):
//   - a failed write: wireguard-go applies a configuration line by line,
//     so the peers before the failing line were added all the same, and
//     the next pass sees them as present, not as added. They are greeted
//     anyway (the device ignores keys it does not have);
//   - an endpoint written to a peer that was added without one (a DNS
//     name that resolved only later): greeted if it has no session yet.
type greetingDevice struct {
	wg  mesh.Device
	dev device
}

func (d greetingDevice) Device() (*wgtypes.Device, error) { return d.wg.Device() }

func (d greetingDevice) ConfigureDevice(c wgtypes.Config) error {
	err := d.wg.ConfigureDevice(c)
	var added, located []wgtypes.Key
	for _, p := range c.Peers {
		switch {
		case p.Remove || p.Endpoint == nil:
		case p.UpdateOnly:
			located = append(located, p.PublicKey)
		default:
			added = append(added, p.PublicKey)
		}
	}
	if len(added) > 0 {
		d.dev.Greet(added...)
	}
	if len(located) > 0 {
		d.dev.GreetSilent(located...)
	}
	return err
}

// observedDevice reports every successful write to onWrite.
type observedDevice struct {
	dev     mesh.Device
	onWrite func(wgtypes.Config)
}

func (d observedDevice) Device() (*wgtypes.Device, error) { return d.dev.Device() }

func (d observedDevice) ConfigureDevice(c wgtypes.Config) error {
	if err := d.dev.ConfigureDevice(c); err != nil {
		return err
	}
	d.onWrite(c)
	return nil
}
