// Command wgmeshctl is the operator's `wg show` for a wgmesh node: the
// live WireGuard device (read through wgctrl over the UAPI socket) with each
// peer's node name and health, taken from the agent's state file or, with
// --kubeconfig, from the API. This file only wires flags to mesh/show.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
	"github.com/wgmesh/wgmesh/mesh/show"
)

// errUnhealthy makes the process exit 1 without an extra message: the
// problems were already printed.
var errUnhealthy = errors.New("unhealthy")

func main() {
	err := newCommand(os.Stdout, os.Stderr).Execute()
	switch {
	case err == nil:
	case errors.Is(err, errUnhealthy):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "wgmeshctl:", err)
		os.Exit(1)
	}
}

const (
	keyConfig           = "config"
	keyInterface        = "interface"
	keyRunDir           = "run-dir"
	keyStateFile        = "state-file"
	keyNodeName         = "node-name"
	keyKubeconfig       = "kubeconfig"
	keyHandshakeTimeout = "handshake-timeout"
)

const outputHelp = `Output fields (-o json|yaml; stable: fields are added, never renamed):
  interface, node, publicKey, listenPort, fwmark    the device and this node
  time                       when the snapshot was judged (RFC 3339, UTC)
  handshakeTimeoutSeconds    the no-handshake / stale-endpoint window
  source                     where desired peers came from: state-file, api, none
  agent                      {lastReconcile, lastError, synced} from the agent state
  healthy                    true when every peer is ok (check's exit 0)
  warnings                   problems with the inputs themselves
  peers[]                    desired peers by node name, then unexpected ones by key:
    node, publicKey, health, problems[] {health, detail}, onDevice,
    endpoint, allowedIPs                  what the device has (as wg show)
    desiredEndpoint, desiredAllowedIPs    what the node publishes
    relayedVia                            the relay node this peer is reached through (absent: direct)
    latestHandshake, handshakeAgeSeconds  absent when there was none
    rxBytes, txBytes, persistentKeepaliveSeconds, desiredSince,
    degraded[] {reason, message}
  excluded[]                 {node, reason, message}: nodes left out of the mesh`

const healthHelp = `Health words:
  ok                 nothing below applies
  missing            a node in the mesh that the device has no peer for
  unexpected         a device peer whose key no node has
  allowed-ips-drift  the device peer's allowed IPs differ from the node's pod CIDRs
  stale-endpoint     the device's endpoint differs from the node's published one
                     and no handshake within the window (a roamed endpoint with a
                     recent handshake is fine)
  no-handshake       no handshake within the window (default 3m, counted from when
                     the agent first wanted the peer) while traffic is expected:
                     the peer has a persistent keepalive, or the device sent it
                     bytes and never completed a handshake. Without keepalive an
                     idle peer cannot be told from a dead one, so set
                     persistent-keepalive if you rely on this check.
  unknown            no agent state and no API: nothing to compare with`

type options struct {
	iface, stateFile, nodeName, kubeconfig string
	timeout                                time.Duration
}

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	var v *viper.Viper
	root := &cobra.Command{
		Use:   "wgmeshctl",
		Short: "wg show for the wgmesh mesh: node names and health of every peer",
		Long: `wgmeshctl reads the node's WireGuard device over its UAPI socket (as root, like
wg) and puts each peer's node name and health next to it. Node names and the
desired peers come from the state file the agent writes on every reconcile
(<run-dir>/state.json), so no API access is needed; with --kubeconfig the
desired peers are computed from the API's Nodes and Peers (external peers,
"peer:NAME"; refused ones are listed as excluded) instead. Relayed pairs
("relayed: NODE via RELAY", and per peer "relayed via") are the agent's
decision from its device's handshakes: with --kubeconfig they are taken from
the state file when it is there.

--interface, --run-dir and --node-name may also come from the agent's config
file (--config /etc/wgmesh/agent.yaml) or WGMESH_* variables, like the agent's.

` + healthHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			v, err = newViper(cmd.Flags())
			return err
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.String(keyConfig, "", "agent config file to take interface, run-dir and node-name from")
	pf.StringP(keyInterface, "i", nodenet.Interface, "WireGuard interface")
	pf.String(keyRunDir, agentstate.DefaultRunDir, "the agent's run-dir (holds "+agentstate.FileName+")")
	pf.String(keyStateFile, "", "agent state file (default <run-dir>/"+agentstate.FileName+")")
	pf.String(keyNodeName, "", "this node's name, for --kubeconfig (default: from the state file or the device's public key)")
	pf.String(keyKubeconfig, "", "compute desired peers from the API with this kubeconfig instead of the state file")
	pf.Duration(keyHandshakeTimeout, show.DefaultHandshakeTimeout, "no-handshake / stale-endpoint window")

	opts := func() (options, error) {
		o := options{
			iface:      v.GetString(keyInterface),
			stateFile:  v.GetString(keyStateFile),
			nodeName:   v.GetString(keyNodeName),
			kubeconfig: root.PersistentFlags().Lookup(keyKubeconfig).Value.String(),
		}
		if o.stateFile == "" {
			o.stateFile = agentstate.Path(v.GetString(keyRunDir))
		}
		d, err := time.ParseDuration(v.GetString(keyHandshakeTimeout))
		if err != nil || d <= 0 {
			return o, fmt.Errorf("--%s %q: want a positive duration such as 3m", keyHandshakeTimeout, v.GetString(keyHandshakeTimeout))
		}
		o.timeout = d
		if o.iface == "" {
			return o, errors.New("--interface is empty")
		}
		return o, nil
	}
	report := func(cmd *cobra.Command) (show.Report, error) {
		o, err := opts()
		if err != nil {
			return show.Report{}, err
		}
		return buildReport(cmd.Context(), o, stderr)
	}

	var output string
	showCmd := &cobra.Command{
		Use:   "show",
		Short: "the device's peers with node names and health (like wg show)",
		Long:  "Show the interface and every peer in the layout of `wg show`, plus node names, health\nand the nodes the agent excludes.\n\n" + healthHelp + "\n\n" + outputHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := report(cmd)
			if err != nil {
				return err
			}
			switch strings.ToLower(output) {
			case "", "text":
				return show.Text(stdout, r)
			case "json":
				return show.JSON(stdout, r)
			case "yaml":
				return show.YAML(stdout, r)
			}
			return fmt.Errorf("-o %q: want text, json or yaml", output)
		},
	}
	showCmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text, json or yaml")

	var showPrivate bool
	showconfCmd := &cobra.Command{
		Use:   "showconf",
		Short: "the live device as a wg-quick style config (keys redacted unless --show-private)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := report(cmd)
			if err != nil {
				return err
			}
			return show.Conf(stdout, r, show.ConfOptions{ShowPrivate: showPrivate})
		},
	}
	showconfCmd.Flags().BoolVar(&showPrivate, "show-private", false, "print the private and preshared keys")

	graphCmd := &cobra.Command{
		Use:   "graph",
		Short: "Graphviz DOT of the mesh as this node sees it (pipe to: dot -Tsvg)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := report(cmd)
			if err != nil {
				return err
			}
			return show.DOT(stdout, r)
		},
	}

	checkCmd := &cobra.Command{
		Use:   "check",
		Short: "exit 0 when every desired peer is healthy, 1 otherwise (one line per problem)",
		Long: `check prints one line per problem ("NODE KEY: HEALTH: DETAIL") and exits 0 when every
desired peer is ok and the device has no unexpected peer, 1 otherwise (also when
the device or the desired state cannot be read). Usable as a probe.

` + healthHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := report(cmd)
			if err != nil {
				return err
			}
			ok, err := show.Check(stdout, r)
			if err != nil {
				return err
			}
			if !ok {
				return errUnhealthy
			}
			return nil
		},
	}
	root.AddCommand(showCmd, showconfCmd, graphCmd, checkCmd)
	root.AddCommand(newRotateKeyCommand(stdout, func() *viper.Viper { return v })) // rotate.go
	root.AddCommand(newPeerConfigCommand(stdout, stderr))                          // peerconfig.go
	return root
}

// newViper binds the flags, WGMESH_* variables and the optional agent
// config file (flag > env > file > default), like the agent does.
func newViper(fs *pflag.FlagSet) (*viper.Viper, error) {
	v := viper.New()
	for _, k := range []string{keyConfig, keyInterface, keyRunDir, keyStateFile, keyNodeName, keyHandshakeTimeout} {
		if err := v.BindPFlag(k, fs.Lookup(k)); err != nil {
			return nil, err
		}
	}
	v.SetEnvPrefix("WGMESH")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	for _, k := range []string{keyInterface, keyRunDir, keyNodeName} {
		if err := v.BindEnv(k); err != nil {
			return nil, err
		}
	}
	if path := v.GetString(keyConfig); path != "" {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config file %s: %w", path, err)
		}
	}
	return v, nil
}

// buildReport reads the device and the desired state and judges them.
func buildReport(ctx context.Context, o options, stderr io.Writer) (show.Report, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	dev, err := readDevice(o.iface)
	if err != nil {
		return show.Report{}, err
	}
	st, err := agentstate.Read(o.stateFile)
	if err != nil {
		st = nil
		if o.kubeconfig == "" {
			fmt.Fprintf(stderr, "wgmeshctl: %v\n", err)
		}
	}
	in := show.Input{Device: dev, State: st, Source: show.SourceStateFile, Now: time.Now(), HandshakeTimeout: o.timeout}
	if o.kubeconfig != "" {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		warn := func(msg string) { fmt.Fprintf(stderr, "wgmeshctl: %s\n", msg) }
		api, err := desiredFromAPI(ctx, apiQuery{kubeconfig: o.kubeconfig, nodeName: o.nodeName, device: dev, prev: st, now: in.Now, warn: warn})
		if err != nil {
			return show.Report{}, err
		}
		in.State, in.Source = api, show.SourceAPI
	}
	return show.Evaluate(in), nil
}
