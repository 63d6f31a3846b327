package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh"
)

// DefaultMetricsAddress is where the shipped agent serves /metrics,
// /healthz and /readyz (the DaemonSet's probes and scrape annotation use
// this port).
const DefaultMetricsAddress = ":9585"

// maxIfNameLen is IFNAMSIZ-1.
const maxIfNameLen = 15

// NodeSource is where the agent learns the Nodes: mesh.NodeSource plus the
// loop that keeps it current, which Run starts and stops.
type NodeSource interface {
	mesh.NodeSource
	// Run feeds the source until ctx ends.
	Run(ctx context.Context) error
}

// MemoryLimit says whether the agent steers the Go runtime's soft memory
// limit.
type MemoryLimit int

const (
	// MemoryLimitAuto keeps the limit at DefaultMemoryLimit (for the
	// default MaxInflight; it follows MaxInflight) plus MemoryPerPeer per
	// peer, unless the GOMEMLIMIT environment variable
	// is set (GOMEMLIMIT=off removes any limit): the shipped behaviour.
	MemoryLimitAuto MemoryLimit = iota
	// MemoryLimitOff never touches the runtime's limit.
	MemoryLimitOff
)

// Config is everything the agent needs. Zero values noted as defaults are
// filled by New; the rest is validated there.
type Config struct {
	// NodeName is this node's Node object. Required.
	NodeName string
	// Interface is the WireGuard interface, a persistent TUN. Required.
	Interface string
	// ListenPort is WireGuard's UDP port.
	ListenPort int
	// KeyFile holds the private key; created (mode 0600) if absent, and
	// replaced on a key rotation. Required.
	KeyFile string
	// MTU of the WireGuard interface and the pods: 0 detects it (the
	// default route's interface MTU minus WireGuard's overhead), else
	// 1280-65535.
	MTU int
	// Endpoint ("host:port") is published instead of InternalIP:ListenPort.
	Endpoint string
	// Keepalive is the default persistent keepalive toward peers, in whole
	// seconds; 0 is off.
	Keepalive time.Duration
	// ClusterCIDRs are the cluster's pod ranges: fail-closed and never
	// masqueraded. Empty means dataplane.DefaultClusterCIDRs.
	ClusterCIDRs []netip.Prefix
	// CNIConfDir receives the CNI conflist once the node has podCIDRs.
	// Required.
	CNIConfDir string
	// CNIBridge is the pod bridge; empty means dataplane.DefaultBridge.
	CNIBridge string
	// CNIDataDir is the IPAM store the conflist names; empty means the
	// plugin's default (cni.DefaultDataDir).
	CNIDataDir string
	// NetworkPolicy enforces Kubernetes NetworkPolicies for this node's
	// pods; off removes the policy tables, so that switching it off
	// really opens traffic again. Needs a kube client.
	NetworkPolicy bool
	// RunDir holds the agent state file: wgmeshctl reads it, and the next
	// run restores its peers from it. Required.
	RunDir string
	// Resync is the period of full reconciles; zero means
	// mesh.DefaultResync.
	Resync time.Duration
	// MetricsAddress is the listen address of /metrics, /healthz and
	// /readyz; empty means no listener (the metrics are kept all the same).
	MetricsAddress string
	// MemoryLimit: MemoryLimitAuto unless a harness shares its process.
	MemoryLimit MemoryLimit
	Logger      *slog.Logger

	// Where the Nodes come from. With NodeSource nil, Run watches the
	// Nodes through KubeClient, or through a client it builds from
	// Kubeconfig (empty: the in-cluster config). The NetworkPolicy engine
	// uses the same client; with a NodeSource given and NetworkPolicy on,
	// KubeClient or Kubeconfig must be set.
	Kubeconfig string
	KubeClient kubernetes.Interface
	NodeSource NodeSource
	// DynamicClient reads the Peer objects (external peers) when Run
	// watches the Nodes itself; nil with KubeClient set means none, nil
	// otherwise means one built like the kube client.
	DynamicClient dynamic.Interface

	// For harnesses. NoOffload opens the TUN without IFF_VNET_HDR (see
	// wgdev.Config.NoOffload).
	NoOffload bool
	// MaxInflight bounds wireguard-go's packets in flight per direction
	// (wgdev.Config.MaxInflight; zero: wgdev's default).
	MaxInflight int
	// OnReconcile is called after every reconcile pass, after the agent's
	// own observers (memory limit, metrics, state file) have seen it. It
	// runs on the reconciler's goroutine and must not block for long.
	OnReconcile func(mesh.Status)
	// OnDeviceWrite is called after every successful device write of the
	// reconciler, with what was written (the benchmark counts the peers
	// each write touches).
	OnDeviceWrite func(wgtypes.Config)
}

// validate checks cfg (defaults filled) without I/O and reports every
// problem. Messages name the options as cmd/wgmesh-agent spells them.
func (c Config) validate() error {
	var errs []error
	required := []struct{ key, val string }{
		{"node-name", c.NodeName}, {"interface", c.Interface}, {"key-file", c.KeyFile},
		{"cni-conf-dir", c.CNIConfDir}, {"run-dir", c.RunDir},
	}
	for _, r := range required {
		if r.val == "" {
			errs = append(errs, fmt.Errorf("%s is required", r.key))
		}
	}
	if len(c.Interface) > maxIfNameLen || len(c.CNIBridge) > maxIfNameLen {
		errs = append(errs, fmt.Errorf("interface %q and cni-bridge %q: names are at most %d bytes", c.Interface, c.CNIBridge, maxIfNameLen))
	}
	if c.Interface == c.CNIBridge {
		errs = append(errs, fmt.Errorf("interface and cni-bridge are both %q", c.Interface))
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen-port %d is not in 1-65535", c.ListenPort))
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		errs = append(errs, fmt.Errorf("mtu %d: want 0 (auto) or 1280-65535", c.MTU))
	}
	if c.Endpoint != "" {
		if _, err := mesh.ParseEndpoint(c.Endpoint); err != nil {
			errs = append(errs, fmt.Errorf("endpoint: %w", err))
		}
	}
	if c.Keepalive < 0 || c.Keepalive%time.Second != 0 || c.Keepalive > mesh.MaxKeepalive {
		errs = append(errs, fmt.Errorf("persistent-keepalive %s: want whole seconds in 0s-%s", c.Keepalive, mesh.MaxKeepalive))
	}
	if c.Resync < 0 {
		errs = append(errs, fmt.Errorf("resync %s is negative", c.Resync))
	}
	for _, p := range c.ClusterCIDRs {
		if !p.IsValid() || p.Masked() != p {
			errs = append(errs, fmt.Errorf("cluster-cidrs: %s is not a network prefix", p))
		}
	}
	if c.MemoryLimit != MemoryLimitAuto && c.MemoryLimit != MemoryLimitOff {
		errs = append(errs, fmt.Errorf("memory limit mode %d is unknown", c.MemoryLimit))
	}
	if c.NetworkPolicy && c.NodeSource != nil && c.KubeClient == nil && c.Kubeconfig == "" {
		errs = append(errs, errors.New("network-policy needs a kube client: set KubeClient or Kubeconfig, or switch NetworkPolicy off"))
	}
	return errors.Join(errs...)
}
