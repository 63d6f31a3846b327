package datapath

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
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// nodeConfig configures one node's data path in the "node" role.
type nodeConfig struct {
	Name         string
	Interface    string
	ListenPort   int
	KeyFile      string
	Spec         string
	AnnDir       string
	ClusterCIDRs []netip.Prefix
	// RunDir holds the agent state file the next run restores its peers
	// from (the agent's run-dir).
	RunDir string
	// MTU 0 means auto-detection, as in the agent.
	MTU int
}

// Progress lines the node role prints for the tests to wait on.
const (
	shutdownMessage       = "clean shutdown: device closed, uapi socket removed"
	preparedMessage       = "fail-closed guard and routes in place"
	firstReconcileMessage = "first reconcile done"
)

// runNodeRole wires the agent's data path the way cmd/wgmesh-agent does
// (fail-closed Prepare first, peers restored from the state file onto the
// persistent TUN, state file written after every pass), with the file node
// source in place of the apiserver, and runs it until SIGTERM.
func runNodeRole(raw []byte) error {
	var cfg nodeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	// `ip netns exec` gave us a private (slave) mount namespace; a tmpfs
	// on /run gives this node its own /var/run/wireguard, so both nodes
	// can call their interface wgmesh0 and `nsenter -m` finds the socket.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", cfg.Name)
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()

	dp, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface, ClusterCIDRs: cfg.ClusterCIDRs, Logger: log})
	if err != nil {
		return err
	}
	if err := dp.Prepare(ctx); err != nil {
		return fmt.Errorf("fail-closed setup: %w", err)
	}
	fmt.Fprintln(os.Stderr, preparedMessage)

	key, created, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	log.Info("private key ready", "created", created, "public_key", key.PublicKey())
	mtu := cfg.MTU
	if mtu == 0 {
		if mtu, err = dataplane.AutoMTU(cfg.Interface, dataplane.DefaultBridge); err != nil {
			return err
		}
	}
	statePath := agentstate.Path(cfg.RunDir)
	peers, err := agentstate.RestorePeers(statePath, cfg.Name, cfg.Interface)
	if err != nil && !errors.Is(err, agentstate.ErrNoState) {
		log.Warn("not restoring peers", "err", err)
	}
	log.Info("starting device", "mtu", mtu, "restored_peers", len(peers))
	dev, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: mtu, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: log, Peers: peers})
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
	state := agentstate.NewWriter(agentstate.WriterConfig{Path: statePath, Logger: log,
		Info: agentstate.Info{Node: cfg.Name, Interface: cfg.Interface, PublicKey: key.PublicKey(), ListenPort: cfg.ListenPort}})
	src := filesource.New(filesource.Config{Spec: cfg.Spec, AnnDir: cfg.AnnDir, Self: cfg.Name, Logger: log})
	rec := mesh.New(mesh.Config{
		NodeName:   cfg.Name,
		PublicKey:  key.PublicKey(),
		ListenPort: cfg.ListenPort,
		MTU:        mtu,
		Source:     src,
		Device:     client,
		Dataplane:  dp,
		Logger:     log,
		Resync:     2 * time.Second,
		OnReconcile: func(s mesh.Status) {
			state.Observe(s)
			if s.Reconciles == 1 {
				fmt.Fprintln(os.Stderr, firstReconcileMessage)
			}
		},
	})

	go src.Run(ctx)
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
	// Cancelled: the reconciler returned; now the device.
	dev.Close()
	sock := filepath.Join("/var/run/wireguard", cfg.Interface+".sock")
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("uapi socket %s still present after close (stat: %v)", sock, err)
	}
	fmt.Fprintln(os.Stderr, shutdownMessage)
	return nil
}
