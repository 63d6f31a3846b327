// Command wgmesh-agent runs on every node: it keeps the node's WireGuard key
// and device, publishes the key and endpoint on the node's Node object,
// watches all Nodes and keeps the full mesh, the routes, the pod bridge, the
// firewall rules and the CNI config in line with them.
//
// This command only parses the configuration; mesh/agent assembles and runs
// the agent (the same assembly the integration harnesses run).
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/wgmesh/wgmesh/mesh/agent"
)

// The agent serves no heap profiles, so the runtime's sampling of
// allocations for them only costs memory: its bucket table (up to 1.4 MiB,
// most of it touched by start-up's allocations). Set as early as main's
// package can.
var _ = func() int { runtime.MemProfileRate = 0; return 0 }()

func main() {
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

// run hands the configuration to the agent's assembly (mesh/agent), which
// starts everything in order and runs until ctx is cancelled or the device
// fails.
func run(ctx context.Context, cfg Config, logOut io.Writer) error {
	a, err := agent.New(agentConfig(cfg, newLogger(cfg, logOut).With("node", cfg.NodeName)))
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// agentConfig is cfg in the assembly's terms. StateDir is only validated:
// the key file, named in full by KeyFile, is all the agent keeps there.
func agentConfig(cfg Config, log *slog.Logger) agent.Config {
	return agent.Config{
		NodeName:       cfg.NodeName,
		Interface:      cfg.Interface,
		ListenPort:     cfg.ListenPort,
		KeyFile:        cfg.KeyFile,
		MTU:            cfg.MTU,
		Endpoint:       cfg.Endpoint,
		Keepalive:      cfg.Keepalive,
		ClusterCIDRs:   cfg.ClusterCIDRs,
		CNIConfDir:     cfg.CNIConfDir,
		CNIBridge:      cfg.CNIBridge,
		NetworkPolicy:  cfg.NetworkPolicy,
		RunDir:         cfg.RunDir,
		Resync:         cfg.Resync,
		MetricsAddress: cfg.MetricsAddress,
		MemoryLimit:    agent.MemoryLimitAuto,
		MaxInflight:    maxInflight(cfg.MaxInflight),
		Logger:         log,
		Kubeconfig:     cfg.Kubeconfig,
	}
}

// maxInflight maps the flag (0: no bound) to agent.Config's (negative: no
// bound, 0: the default).
func maxInflight(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
