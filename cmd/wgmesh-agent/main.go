// Command wgmesh-agent runs on every node: it keeps the node's WireGuard key
// and device, publishes the key and endpoint on the node's Node object,
// watches all Nodes and keeps the full mesh, the routes, the pod bridge, the
// firewall rules and the CNI config in line with them.
//
// This file only wires the packages together; see mesh, mesh/wgdev,
// mesh/dataplane and mesh/kube for the logic.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// The Go runtime's soft memory limit, unless the GOMEMLIMIT environment
// variable sets one (GOMEMLIMIT=off removes it): defaultMemoryLimit plus
// memoryPerPeer for every peer. Under bulk load wireguard-go holds a
// 64 KiB buffer per packet in flight and its pools keep what they once
// needed: without a limit the heap grows to 400+ MiB and stays there. A
// limit makes the GC hand pooled buffers back, at a throughput cost that
// grows as the limit shrinks (integration/bench, 2 cores: 192 MiB about
// -7%, 160 MiB -16%, 128 MiB -20%, 100 MiB -30%; see docs/benchmarks.md),
// so the default is 192 MiB and memory-tight nodes can set GOMEMLIMIT.
// Each peer costs about 25 KiB in wireguard-go and the reconciler plus its
// Node in the informer cache (the bench's scale figures), so the limit
// grows with the mesh: a fixed one would make the GC run without pause in
// a large cluster.
const (
	defaultMemoryLimit = 192 << 20
	memoryPerPeer      = 48 << 10
)

// memoryLimiter keeps the soft limit in step with the peer count.
type memoryLimiter struct {
	enabled bool
	peers   int
}

// newMemoryLimiter sets the limit for no peers, unless GOMEMLIMIT is set.
func newMemoryLimiter(lookupEnv func(string) (string, bool)) *memoryLimiter {
	_, set := lookupEnv("GOMEMLIMIT")
	m := &memoryLimiter{enabled: !set, peers: -1}
	m.observe(0)
	return m
}

func (m *memoryLimiter) observe(peers int) {
	if !m.enabled || peers == m.peers {
		return
	}
	m.peers = peers
	debug.SetMemoryLimit(defaultMemoryLimit + int64(peers)*memoryPerPeer)
}

var memLimit *memoryLimiter

func main() {
	memLimit = newMemoryLimiter(os.LookupEnv)
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "wgmesh-agent:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wgmesh-agent",
		Short: "wgmesh node agent: WireGuard full mesh driven by Kubernetes Node objects",
		Long: `wgmesh-agent keeps this node in the wgmesh WireGuard mesh.

Every setting is a flag, an environment variable WGMESH_<KEY> (dashes as
underscores, e.g. WGMESH_LISTEN_PORT) or a key in the optional --config file;
flags win over the environment, which wins over the file.

Fail-closed: first thing at start the agent installs an unreachable route
per cluster-cidrs range and the nftables table inet wgmesh-guard, which drops
traffic from or to those ranges leaving by any interface but the WireGuard
interface, the pod bridge and lo. Neither is ever removed by the agent.

On SIGTERM/SIGINT the agent closes the WireGuard device (removing its UAPI
socket) and exits. The WireGuard interface is a persistent TUN: it stays,
with its routes, as do the pod bridge and the nftables rules, so pod traffic
to other nodes is dropped (never sent in the clear) while no agent runs, and
a restarted or upgraded agent re-attaches to it, restores the peers from its
state file in run-dir and handshakes at once: established connections
survive. "wgmesh-agent uninstall" removes all of it from a node for good.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := newViper(cmd.Flags())
			if err != nil {
				return err
			}
			cfg, err := loadConfig(v)
			if err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, cfg, os.Stderr)
		},
	}
	registerFlags(cmd.Flags())
	cmd.AddCommand(newUninstallCommand())
	cmd.CompletionOptions.DisableDefaultCmd = true
	return cmd
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = kube.DefaultComponent
	return kubernetes.NewForConfig(rc)
}

// run wires config → key → device → wgctrl → node source → dataplane →
// reconciler and runs until ctx is cancelled or the device fails.
func run(ctx context.Context, cfg Config, logOut io.Writer) error {
	log := newLogger(cfg, logOut).With("node", cfg.NodeName)

	// Fail closed before anything else: from here on no packet to or
	// from a cluster range leaves in the clear, whatever happens next.
	dp, err := dataplane.New(dataplane.Config{
		WGInterface:  cfg.Interface,
		Bridge:       cfg.CNIBridge,
		ClusterCIDRs: cfg.ClusterCIDRs,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	if err := dp.Prepare(ctx); err != nil {
		return fmt.Errorf("fail-closed setup: %w", err)
	}

	key, created, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	if created {
		log.Info("generated a new private key", "key_file", cfg.KeyFile)
	}
	pub := key.PublicKey()

	mtu := cfg.MTU
	if mtu == 0 {
		if mtu, err = dataplane.AutoMTU(cfg.Interface, cfg.CNIBridge); err != nil {
			return fmt.Errorf("detect mtu: %w", err)
		}
		log.Info("mtu detected", "mtu", mtu)
	}

	client, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	source, err := kube.New(kube.Config{Client: client, NodeName: cfg.NodeName, Logger: log})
	if err != nil {
		return err
	}
	planes := dataplane.Multi{dp, cniWriter(cfg, log)}

	dev, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: mtu, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: log,
		Peers: restorePeers(cfg, log)})
	if err != nil {
		return err
	}
	if err := dev.Open(); err != nil {
		return err
	}
	defer dev.Close()
	wg, err := wgdev.Dial(cfg.Interface)
	if err != nil {
		return err
	}
	defer wg.Close()

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
		Source:           source,
		Device:           wg,
		Dataplane:        planes,
		Resolver:         net.DefaultResolver,
		Logger:           log,
		Resync:           cfg.Resync,
		OnReconcile: func(s mesh.Status) {
			if memLimit != nil {
				memLimit.observe(len(s.Peers))
			}
			prom.Observe(s)
			state.Observe(s)
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
		ln, err := net.Listen("tcp", cfg.MetricsAddress)
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
	if err := startNetworkPolicy(ctx, cfg, client, log, &wgs); err != nil {
		return fmt.Errorf("network policy: %w", err)
	}

	log.Info("agent running", "interface", cfg.Interface, "listen_port", cfg.ListenPort,
		"public_key", pub.String(), "mtu", mtu)
	select {
	case <-ctx.Done():
		log.Info("shutting down: closing the wireguard device; the interface, routes, bridge and firewall rules stay")
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

// restorePeers returns the peers the previous run of the agent had, from its
// state file, so that a restarted agent carries traffic before it has read
// the node list. Any problem just means starting without them.
func restorePeers(cfg Config, log *slog.Logger) []wgtypes.PeerConfig {
	path := agentstate.Path(cfg.RunDir)
	peers, err := agentstate.RestorePeers(path, cfg.NodeName, cfg.Interface)
	switch {
	case err == nil:
		log.Info("restoring the previous run's peers", "state_file", path, "peers", len(peers))
		return peers
	case errors.Is(err, agentstate.ErrNoState):
		return nil
	default:
		log.Warn("not restoring peers from the state file", "err", err)
		return nil
	}
}
