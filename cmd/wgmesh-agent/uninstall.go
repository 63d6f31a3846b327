package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// uninstallKeys are the settings uninstall reads; the rest of the agent's
// configuration may be present (same --config file, same env) and is
// ignored.
var uninstallKeys = []string{keyInterface, keyCNIBridge, keyCNIConfDir, keyRunDir, keyClusterCIDRs}

// errAgentRunning: uninstall refuses to pull the data path from under a
// live agent, which would only re-create it.
var errAgentRunning = errors.New("an agent is running on this node (its UAPI socket answers); stop it first")

func newUninstallCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "remove wgmesh's data path from this node for good",
		Long: `uninstall removes what the agent leaves on a node when it stops: the
persistent WireGuard TUN, wgmesh's routes (including the fail-closed
unreachable routes), the nftables tables inet wgmesh and inet wgmesh-guard (and the
NetworkPolicy tables inet/bridge wgmesh-policy),
wgmesh's rules in iptables' FORWARD chains, the pod bridge (pods still on it
lose their network), the CNI conflist and the agent state file.

The agent never does this on its own: a stopped, crashed or upgrading agent
leaves the data path in place, fail-closed. Run uninstall after the agent
has stopped for good, e.g. from a DaemonSet's cleanup job. It reads the same
flags, WGMESH_* variables and --config file as the agent.`,
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
				// Only the keys uninstall uses matter (no node
				// name needed).
				if msgs := relevantProblems(err); len(msgs) > 0 {
					return fmt.Errorf("invalid configuration:\n%s", strings.Join(msgs, "\n"))
				}
			}
			return uninstall(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	fs := pflag.NewFlagSet("all", pflag.ContinueOnError)
	registerFlags(fs)
	cmd.Flags().AddFlag(fs.Lookup(keyConfig))
	for _, k := range uninstallKeys {
		cmd.Flags().AddFlag(fs.Lookup(k))
	}
	return cmd
}

// relevantProblems keeps the validation messages about keys uninstall uses.
func relevantProblems(err error) []string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		for _, k := range uninstallKeys {
			if strings.Contains(line, k) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// uninstall removes every piece and reports each; it carries on past
// failures and returns them joined.
func uninstall(ctx context.Context, cfg Config, out io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if agentRunning(cfg.Interface) {
		return errAgentRunning
	}
	log := slog.New(slog.NewTextHandler(out, nil))
	var errs []error
	step := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			fmt.Fprintf(out, "FAILED %s: %v\n", what, err)
			return
		}
		fmt.Fprintf(out, "removed %s\n", what)
	}
	step("wireguard interface "+cfg.Interface, wgdev.DeleteLink(cfg.Interface))
	dp, err := dataplane.New(dataplane.Config{
		WGInterface: cfg.Interface, Bridge: cfg.CNIBridge, ClusterCIDRs: cfg.ClusterCIDRs, Logger: log,
	})
	if err != nil {
		step("routes, nftables tables and bridge", err)
	} else {
		step("routes, nftables tables, FORWARD rules and bridge "+cfg.CNIBridge, dp.Uninstall(ctx))
	}
	step("network policy tables", removePolicyTables(cfg))
	step("CNI conflist in "+cfg.CNIConfDir, cni.RemoveConflist(cfg.CNIConfDir))
	statePath := agentstate.Path(cfg.RunDir)
	if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		step("agent state file "+statePath, err)
	} else {
		step("agent state file "+statePath, nil)
	}
	return errors.Join(errs...)
}

// agentRunning reports whether the interface's UAPI socket accepts a
// connection, i.e. a wireguard-go (our agent) serves it.
func agentRunning(iface string) bool {
	c, err := net.DialTimeout("unix", wgdev.SocketPath(iface), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
