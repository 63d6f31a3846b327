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

	"github.com/wgmesh/wgmesh/mesh"
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
}

// shutdownMessage is printed by a node that shut down cleanly.
const shutdownMessage = "clean shutdown: device closed, uapi socket removed"

// runNodeRole wires the agent's data path the way cmd/wgmesh-agent does,
// with the file node source in place of the apiserver, and runs it until
// SIGTERM.
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

	key, created, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	log.Info("private key ready", "created", created, "public_key", key.PublicKey())
	mtu, err := dataplane.AutoMTU(cfg.Interface, dataplane.DefaultBridge)
	if err != nil {
		return err
	}
	dev, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: mtu, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: log})
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
	dp, err := dataplane.New(dataplane.Config{WGInterface: cfg.Interface, ClusterCIDRs: cfg.ClusterCIDRs, Logger: log})
	if err != nil {
		return err
	}
	src := newFileSource(cfg.Spec, cfg.AnnDir, cfg.Name, log)
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
	})

	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
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
	// Cancelled: the reconciler returned; now the device.
	dev.Close()
	sock := filepath.Join("/var/run/wireguard", cfg.Interface+".sock")
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("uapi socket %s still present after close (stat: %v)", sock, err)
	}
	fmt.Fprintln(os.Stderr, shutdownMessage)
	return nil
}
