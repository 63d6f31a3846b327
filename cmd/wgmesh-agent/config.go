package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// Config keys: each is a flag (--key), an environment variable
// (WGMESH_KEY with dashes as underscores) and a config file key.
const (
	keyConfig              = "config"
	keyNodeName            = "node-name"
	keyKubeconfig          = "kubeconfig"
	keyInterface           = "interface"
	keyListenPort          = "listen-port"
	keyKeyFile             = "key-file"
	keyMTU                 = "mtu"
	keyEndpoint            = "endpoint"
	keyPersistentKeepalive = "persistent-keepalive"
	keyClusterCIDRs        = "cluster-cidrs"
	keyStateDir            = "state-dir"
	keyRunDir              = "run-dir"
	keyCNIConfDir          = "cni-conf-dir"
	keyCNIBridge           = "cni-bridge"
	keyResync              = "resync"
	keyLogFormat           = "log-format"
	keyLogLevel            = "log-level"
	keyMetricsAddress      = "metrics-address"
	keyNetworkPolicy       = "network-policy"
	keyMaxInflight         = "max-inflight"
)

// envPrefix prefixes every environment variable.
const envPrefix = "WGMESH"

// mtuAuto asks for the underlay MTU minus WireGuard's overhead.
const mtuAuto = "auto"

// Config is the agent's validated configuration.
type Config struct {
	NodeName   string
	Kubeconfig string // empty: in-cluster
	Interface  string
	ListenPort int
	KeyFile    string
	// MTU is 0 for "auto".
	MTU          int
	Endpoint     string
	Keepalive    time.Duration
	ClusterCIDRs []netip.Prefix
	StateDir     string
	RunDir       string
	CNIConfDir   string
	CNIBridge    string
	Resync       time.Duration
	LogFormat    string
	LogLevel     slog.Level
	// MetricsAddress serves /metrics, /healthz and /readyz; empty
	// disables the listener.
	MetricsAddress string
	// NetworkPolicy enforces Kubernetes NetworkPolicies for this node's
	// pods (mesh/policy); off removes the policy tables.
	NetworkPolicy bool
	// MaxInflight bounds the packets per direction wireguard-go holds
	// (wgdev.DefaultMaxInflight); 0 means no bound.
	MaxInflight int
}

// minMaxInflight is the smallest bound accepted: wireguard-go stages up to
// a batch (128 packets) per peer without a session, and those count too.
const minMaxInflight = 128

// registerFlags declares every key with its default and help.
func registerFlags(fs *pflag.FlagSet) {
	fs.String(keyConfig, "", "optional config file (YAML, JSON or TOML); flags and WGMESH_* env override it")
	fs.String(keyNodeName, "", "this node's Node object name (required; downward API spec.nodeName in a DaemonSet)")
	fs.String(keyKubeconfig, "", "kubeconfig path; empty = in-cluster config")
	fs.String(keyInterface, nodenet.Interface, "WireGuard interface name")
	fs.Int(keyListenPort, 51820, "WireGuard UDP listen port")
	fs.String(keyKeyFile, "/var/lib/wgmesh/private.key", "private key file; created once (mode 0600) if absent")
	fs.String(keyMTU, mtuAuto, `WireGuard and pod MTU: "auto" (default-route interface MTU - 80) or a number`)
	fs.String(keyEndpoint, "", "published endpoint override host:port (default: InternalIP:listen-port)")
	fs.Duration(keyPersistentKeepalive, 0, "default persistent keepalive toward peers (0 = off); per node: annotation "+mesh.AnnotationKeepalive)
	fs.String(keyClusterCIDRs, "10.244.0.0/16", "comma-separated cluster pod ranges: never masqueraded, and fail-closed (only ever routed through the mesh; unreachable otherwise)")
	fs.String(keyStateDir, "/var/lib/wgmesh", "directory for persistent state")
	fs.String(keyRunDir, "/var/run/wgmesh", "directory for runtime state")
	fs.String(keyCNIConfDir, "/etc/cni/net.d", "directory the CNI conflist is written to")
	fs.String(keyCNIBridge, dataplane.DefaultBridge, "pod bridge name")
	fs.Duration(keyResync, mesh.DefaultResync, "period of full reconciles without any change")
	fs.String(keyLogFormat, "text", "log format: text or json")
	fs.String(keyLogLevel, "info", "log level: debug, info, warn or error")
	fs.String(keyMetricsAddress, agent.DefaultMetricsAddress, `listen address for /metrics, /healthz and /readyz; empty = off`)
	fs.Int(keyMaxInflight, wgdev.DefaultMaxInflight, "packets per direction wireguard-go may hold between reading and sending them (64 KiB of buffer each: the data path's memory bound); 0 = no bound")
	fs.Bool(keyNetworkPolicy, true, "enforce Kubernetes NetworkPolicies for this node's pods (false removes wgmesh's policy tables)")
}

// newViper binds flags, WGMESH_* environment variables and, if --config
// is set, the config file. Viper's precedence: flag > env > file > default.
func newViper(fs *pflag.FlagSet) (*viper.Viper, error) {
	v := viper.New()
	if err := v.BindPFlags(fs); err != nil {
		return nil, err
	}
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	if path := v.GetString(keyConfig); path != "" {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("read config file %s: %w", path, err)
		}
	}
	return v, nil
}

// loadConfig validates v into a Config. Every problem is reported, not just
// the first.
func loadConfig(v *viper.Viper) (Config, error) {
	var errs []error
	c := Config{
		NodeName:       strings.TrimSpace(v.GetString(keyNodeName)),
		Kubeconfig:     v.GetString(keyKubeconfig),
		Interface:      v.GetString(keyInterface),
		KeyFile:        v.GetString(keyKeyFile),
		Endpoint:       strings.TrimSpace(v.GetString(keyEndpoint)),
		StateDir:       v.GetString(keyStateDir),
		RunDir:         v.GetString(keyRunDir),
		CNIConfDir:     v.GetString(keyCNIConfDir),
		CNIBridge:      v.GetString(keyCNIBridge),
		LogFormat:      strings.ToLower(v.GetString(keyLogFormat)),
		MetricsAddress: v.GetString(keyMetricsAddress),
	}
	if c.NodeName == "" {
		errs = append(errs, fmt.Errorf("%s is required (flag --%s or env %s_NODE_NAME)", keyNodeName, keyNodeName, envPrefix))
	}
	for key, val := range map[string]string{
		keyInterface: c.Interface, keyKeyFile: c.KeyFile, keyStateDir: c.StateDir,
		keyRunDir: c.RunDir, keyCNIConfDir: c.CNIConfDir, keyCNIBridge: c.CNIBridge,
	} {
		if val == "" {
			errs = append(errs, fmt.Errorf("%s must not be empty", key))
		}
	}
	if len(c.Interface) > 15 || len(c.CNIBridge) > 15 {
		errs = append(errs, errors.New("interface and cni-bridge names are at most 15 bytes"))
	}
	if c.Interface != "" && c.Interface == c.CNIBridge {
		errs = append(errs, fmt.Errorf("interface and cni-bridge are both %q", c.Interface))
	}

	var err error
	if c.ListenPort, err = intValue(v, keyListenPort); err != nil {
		errs = append(errs, err)
	} else if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("%s %d is not in 1-65535", keyListenPort, c.ListenPort))
	}

	switch mtu := strings.TrimSpace(strings.ToLower(v.GetString(keyMTU))); mtu {
	case mtuAuto, "":
	default:
		n, err := strconv.Atoi(mtu)
		if err != nil || n < 1280 || n > 65535 {
			errs = append(errs, fmt.Errorf("%s %q: want %q or a number in 1280-65535", keyMTU, mtu, mtuAuto))
		}
		c.MTU = n
	}

	if c.Endpoint != "" {
		if _, err := mesh.ParseEndpoint(c.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", keyEndpoint, err))
		}
	}
	if c.Keepalive, err = durationValue(v, keyPersistentKeepalive); err != nil {
		errs = append(errs, err)
	} else if c.Keepalive < 0 || c.Keepalive%time.Second != 0 || c.Keepalive > mesh.MaxKeepalive {
		errs = append(errs, fmt.Errorf("%s %s: want whole seconds in 0s-%s", keyPersistentKeepalive, c.Keepalive, mesh.MaxKeepalive))
	}
	if c.Resync, err = durationValue(v, keyResync); err != nil {
		errs = append(errs, err)
	} else if c.Resync < time.Second {
		errs = append(errs, fmt.Errorf("%s %s: want at least 1s", keyResync, c.Resync))
	}

	if c.ClusterCIDRs, err = prefixList(v.Get(keyClusterCIDRs)); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", keyClusterCIDRs, err))
	} else if len(c.ClusterCIDRs) == 0 {
		errs = append(errs, fmt.Errorf("%s must list at least one prefix", keyClusterCIDRs))
	}

	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("%s %q: want text or json", keyLogFormat, c.LogFormat))
	}
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString(keyLogLevel))); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", keyLogLevel, err))
	}
	if c.MaxInflight, err = intValue(v, keyMaxInflight); err != nil {
		errs = append(errs, err)
	} else if c.MaxInflight != 0 && (c.MaxInflight < minMaxInflight || c.MaxInflight > 1<<16) {
		errs = append(errs, fmt.Errorf("%s %d: want 0 (no bound) or %d-%d", keyMaxInflight, c.MaxInflight, minMaxInflight, 1<<16))
	}
	if c.NetworkPolicy, err = boolValue(v, keyNetworkPolicy); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// intValue reads an integer key strictly: viper's GetInt turns "abc" into 0.
func intValue(v *viper.Viper, key string) (int, error) {
	switch x := v.Get(key).(type) {
	case int:
		return x, nil
	case int64:
		return int(x), nil
	case float64:
		if x != float64(int(x)) {
			return 0, fmt.Errorf("%s %v is not an integer", key, x)
		}
		return int(x), nil
	default:
		n, err := strconv.Atoi(strings.TrimSpace(fmt.Sprint(x)))
		if err != nil {
			return 0, fmt.Errorf("%s %q is not an integer", key, fmt.Sprint(x))
		}
		return n, nil
	}
}

// boolValue reads a boolean key strictly: viper's GetBool turns "yes" into
// false.
func boolValue(v *viper.Viper, key string) (bool, error) {
	if b, ok := v.Get(key).(bool); ok {
		return b, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(fmt.Sprint(v.Get(key))))
	if err != nil {
		return false, fmt.Errorf("%s %q is not true or false", key, fmt.Sprint(v.Get(key)))
	}
	return b, nil
}

// durationValue reads a duration key strictly ("30s"; a bare 0 is allowed).
func durationValue(v *viper.Viper, key string) (time.Duration, error) {
	switch x := v.Get(key).(type) {
	case time.Duration:
		return x, nil
	case int:
		if x == 0 {
			return 0, nil
		}
	default:
		s := strings.TrimSpace(fmt.Sprint(x))
		if s == "0" {
			return 0, nil
		}
		d, err := time.ParseDuration(s)
		if err == nil {
			return d, nil
		}
	}
	return 0, fmt.Errorf("%s %q is not a duration such as 30s", key, fmt.Sprint(v.Get(key)))
}

// prefixList accepts "a,b", "a b" or a YAML list.
func prefixList(raw any) ([]netip.Prefix, error) {
	var items []string
	switch x := raw.(type) {
	case string:
		items = strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case []string:
		items = x
	case []any:
		for _, e := range x {
			items = append(items, fmt.Sprint(e))
		}
	case nil:
	default:
		return nil, fmt.Errorf("unsupported value %v", x)
	}
	var out []netip.Prefix
	var errs []error
	for _, s := range items {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Masked() != p {
			errs = append(errs, fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked()))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}
