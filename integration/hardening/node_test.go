package hardening

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

// nodeConfig configures one node in the "node" role.
type nodeConfig struct {
	Name       string
	Interface  string
	ListenPort int
	KeyFile    string
	Spec       string
	AnnDir     string
	// RunDir holds the agent state file; CNIConfDir gets the conflist.
	RunDir     string
	CNIConfDir string
	// Keepalive is the agent's default persistent keepalive.
	Keepalive time.Duration
	Resync    time.Duration
	Poll      time.Duration
	// Hosts, if set, is bind-mounted over /etc/hosts in the node's private
	// mount namespace: the real resolver (net.DefaultResolver) reads it.
	Hosts string
}

// shutdownMessage is printed by a node that shut down cleanly.
const shutdownMessage = "clean shutdown"

// runNodeRole runs the agent (mesh/agent, as cmd/wgmesh-agent does: key
// file with rotation, the real resolver, the dataplane with the pod bridge
// whose gateway address the tests ping) over the file node source until
// SIGTERM. It logs JSON at debug level, wireguard-go's chatter included, so
// that the tests can search every line for private keys.
func runNodeRole(raw []byte) error {
	var cfg nodeConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return err
	}
	// `ip netns exec` gave us a private mount namespace: our own /run
	// (so every node's socket is /var/run/wireguard/wgmesh0.sock) and,
	// if asked, our own /etc/hosts.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	if cfg.Hosts != "" {
		if err := unix.Mount(cfg.Hosts, "/etc/hosts", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on /etc/hosts: %w", cfg.Hosts, err)
		}
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", cfg.Name)
	a, err := agent.New(agent.Config{
		NodeName:   cfg.Name,
		Interface:  cfg.Interface,
		ListenPort: cfg.ListenPort,
		KeyFile:    cfg.KeyFile,
		MTU:        1420,
		Keepalive:  cfg.Keepalive,
		CNIConfDir: cfg.CNIConfDir,
		RunDir:     cfg.RunDir,
		Resync:     cfg.Resync,
		Logger:     log,
		NodeSource: filesource.New(filesource.Config{Spec: cfg.Spec, AnnDir: cfg.AnnDir, Self: cfg.Name, Poll: cfg.Poll, Logger: log}),
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	if err := a.Run(ctx); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, shutdownMessage)
	return nil
}
