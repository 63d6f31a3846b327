package hardening

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// nodeConfig configures one node in the "node" role.
type nodeConfig struct {
	Name       string
	Interface  string
	ListenPort int
	KeyFile    string
	Spec       string
	AnnDir     string
	// Keepalive is the agent's default persistent keepalive.
	Keepalive time.Duration
	Resync    time.Duration
	Poll      time.Duration
	// WGAddr (e.g. 10.244.1.1) goes on the WireGuard interface as /32,
	// and Routes (the other nodes' pod CIDRs) point through it with that
	// source, standing in for the dataplane: the tests here are about
	// WireGuard peers, not bridges and firewall rules.
	WGAddr string
	Routes []string
	// Hosts, if set, is bind-mounted over /etc/hosts in the node's private
	// mount namespace: the real resolver (net.DefaultResolver) reads it.
	Hosts string
}

// noDataplane is the mesh.Dataplane of these tests: routes are static.
type noDataplane struct{}

func (noDataplane) Apply(context.Context, mesh.DataplaneState) error { return nil }

// shutdownMessage is printed by a node that shut down cleanly.
const shutdownMessage = "clean shutdown"

// runNodeRole wires a node the way cmd/wgmesh-agent does (key file with
// rotation, wireguard-go device with UAPI socket, wgctrl, reconciler with
// the real resolver) over the file node source, and runs until SIGTERM.
// It logs JSON at debug level, wireguard-go's chatter included, so that
// the tests can search every line for private keys.
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

	key, _, err := wgdev.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return err
	}
	dev, err := wgdev.New(wgdev.Config{Name: cfg.Interface, MTU: 1420, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: log})
	if err != nil {
		return err
	}
	if err := dev.Open(); err != nil {
		return err
	}
	defer dev.Close()
	if err := ip("addr", "add", cfg.WGAddr+"/32", "dev", cfg.Interface); err != nil {
		return err
	}
	for _, r := range cfg.Routes {
		if err := ip("route", "add", r, "dev", cfg.Interface, "src", cfg.WGAddr); err != nil {
			return err
		}
	}
	client, err := wgdev.Dial(cfg.Interface)
	if err != nil {
		return err
	}
	defer client.Close()
	src := filesource.New(filesource.Config{Spec: cfg.Spec, AnnDir: cfg.AnnDir, Self: cfg.Name, Poll: cfg.Poll, Logger: log})
	rec := mesh.New(mesh.Config{
		NodeName:         cfg.Name,
		PublicKey:        key.PublicKey(),
		Keys:             wgdev.KeyFile(cfg.KeyFile),
		ListenPort:       cfg.ListenPort,
		DefaultKeepalive: cfg.Keepalive,
		MTU:              1420,
		Source:           src,
		Device:           client,
		Dataplane:        noDataplane{},
		Resolver:         net.DefaultResolver,
		Logger:           log,
		Resync:           cfg.Resync,
	})

	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
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
	dev.Close()
	fmt.Fprintln(os.Stderr, shutdownMessage)
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}
