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
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// nodeConfig configures one node's agent in the "node" role.
type nodeConfig struct {
	Name         string
	Interface    string
	ListenPort   int
	KeyFile      string
	Spec         string
	AnnDir       string
	ClusterCIDRs []netip.Prefix
	// RunDir holds the agent state file the next run restores its peers
	// from (the agent's run-dir); CNIConfDir gets the conflist.
	RunDir     string
	CNIConfDir string
	// MTU 0 means auto-detection, as in the agent.
	MTU int
	// Resync 0 means defaultResync; Poll 0 the file source's default.
	Resync time.Duration
	Poll   time.Duration
	// Hosts, if set, is bind-mounted over /etc/hosts in the node's private
	// mount namespace: the real resolver (net.DefaultResolver) reads it.
	Hosts string
	// DebugJSON logs JSON at debug level, wireguard-go's chatter
	// included, so that a test can search every line for private keys;
	// otherwise the log is text at info level.
	DebugJSON bool
}

// defaultResync is short so that a test sees a resync within seconds.
const defaultResync = 2 * time.Second

// Progress lines the node's output shows for the tests to wait on: the
// agent logs the first two, the role prints the last.
const (
	preparedMessage       = agent.MsgFailClosed
	firstReconcileMessage = agent.MsgFirstReconcile
	shutdownMessage       = "clean shutdown: device closed, uapi socket removed"
)

// runNodeRole runs the agent (mesh/agent, as cmd/wgmesh-agent does: key
// file with rotation, the real resolver, the dataplane with the pod bridge)
// with the file node source in place of the apiserver until SIGTERM, then
// checks that the device's UAPI socket is gone.
func runNodeRole(raw []byte) error {
	var cfg nodeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	// `ip netns exec` gave us a private (slave) mount namespace; a tmpfs
	// on /run gives this node its own /var/run/wireguard, so every node
	// can call its interface wgmesh0 and `nsenter -m` finds the socket.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	if cfg.Hosts != "" {
		if err := unix.Mount(cfg.Hosts, "/etc/hosts", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on /etc/hosts: %w", cfg.Hosts, err)
		}
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})
	if cfg.DebugJSON {
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	log := slog.New(h).With("node", cfg.Name)
	if cfg.Resync == 0 {
		cfg.Resync = defaultResync
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()

	a, err := agent.New(agent.Config{
		NodeName:     cfg.Name,
		Interface:    cfg.Interface,
		ListenPort:   cfg.ListenPort,
		KeyFile:      cfg.KeyFile,
		MTU:          cfg.MTU,
		ClusterCIDRs: cfg.ClusterCIDRs,
		CNIConfDir:   cfg.CNIConfDir,
		RunDir:       cfg.RunDir,
		Resync:       cfg.Resync,
		Logger:       log,
		NodeSource:   filesource.New(filesource.Config{Spec: cfg.Spec, AnnDir: cfg.AnnDir, Self: cfg.Name, Poll: cfg.Poll, Logger: log}),
	})
	if err != nil {
		return err
	}
	if err := a.Run(ctx); err != nil {
		return err
	}
	sock := wgdev.SocketPath(cfg.Interface)
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("uapi socket %s still present after close (stat: %v)", sock, err)
	}
	fmt.Fprintln(os.Stderr, shutdownMessage)
	return nil
}
