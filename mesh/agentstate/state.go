// Package agentstate is the agent's local record of what it wants the mesh
// to look like: a JSON file written atomically after every reconcile pass
// (by default /var/run/wgmesh/state.json) and read back by wgmeshctl, so the
// operator's tool can put node names and health next to the device's peers
// without any API access.
//
// The file maps node name ↔ public key ↔ desired endpoint ↔ desired allowed
// IPs, and lists the excluded and degraded nodes with their reasons and the
// outcome of the last pass. It never holds a private key.
package agentstate

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// Version is the schema version written into the file. Readers refuse a
// newer major version rather than misread it.
const Version = 1

// FileName is the state file's name inside the agent's run directory.
const FileName = "state.json"

// DefaultRunDir is the agent's default run-dir.
const DefaultRunDir = "/var/run/wgmesh"

// Sentinel errors.
var (
	// ErrNoState means there is no state file (the agent has not completed
	// a pass, or runs with another run-dir). Wraps os.ErrNotExist.
	ErrNoState = errors.New("no agent state file")
	// ErrBadState means the file exists but cannot be used.
	ErrBadState = errors.New("unusable agent state file")
)

// State is the content of the state file. Field names are part of the
// file format: add fields, never rename them.
type State struct {
	Version int `json:"version"`
	// Node is this node's Node object name.
	Node string `json:"node"`
	// Interface is the WireGuard interface the agent runs.
	Interface string `json:"interface,omitempty"`
	// PublicKey is this node's WireGuard public key.
	PublicKey string `json:"publicKey"`
	// ListenPort is the WireGuard UDP port.
	ListenPort int `json:"listenPort,omitempty"`
	// LastReconcile is when the pass that wrote this file finished.
	LastReconcile time.Time `json:"lastReconcile"`
	// LastError is that pass's error, empty if it succeeded.
	LastError string `json:"lastError,omitempty"`
	// Synced reports whether the node informer had synced.
	Synced bool `json:"synced"`
	// Reconciles and Errors count passes and failed passes since the
	// agent started.
	Reconciles uint64 `json:"reconciles"`
	Errors     uint64 `json:"errors"`
	// LocalPodCIDRs are this node's own pod prefixes.
	LocalPodCIDRs []string `json:"localPodCIDRs"`
	// Peers are the desired peers, sorted by node name.
	Peers []Peer `json:"peers"`
	// Excluded nodes are left out of the mesh, sorted by node name.
	Excluded []Exclusion `json:"excluded"`
	// Degraded nodes are peers with a problem worth a warning.
	Degraded []Exclusion `json:"degraded"`
}

// Peer is one desired peer.
type Peer struct {
	Node      string `json:"node"`
	PublicKey string `json:"publicKey"`
	// Endpoint is the published endpoint as ip:port; empty when it could
	// not be resolved.
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowedIPs"`
	// PersistentKeepaliveSeconds is the keepalive the agent configures.
	PersistentKeepaliveSeconds int `json:"persistentKeepaliveSeconds,omitempty"`
	// Since is when the agent first wanted this node as a peer with this
	// public key (kept across passes and agent restarts), so a reader can
	// tell a freshly added peer from one that had time to handshake.
	Since time.Time `json:"since"`
	// RelayedVia names the relay node this peer's pod traffic goes
	// through (its allowed IPs are on the relay's peer); empty: direct.
	RelayedVia string `json:"relayedVia,omitempty"`
}

// Exclusion is a node with a reason (mesh.Reason) and a human-readable
// message.
type Exclusion struct {
	Node    string `json:"node"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Info is what the state records about this node besides mesh.Status.
type Info struct {
	Node       string
	Interface  string
	PublicKey  wgtypes.Key
	ListenPort int
}

// FromStatus builds the state for one pass. prev is the previous state (or
// nil): a peer present there with the same node name and public key keeps
// its Since; any other peer's Since is the pass's time.
func FromStatus(info Info, st mesh.Status, prev *State) State {
	now := st.LastReconcile
	s := State{
		Version:       Version,
		Node:          info.Node,
		Interface:     info.Interface,
		ListenPort:    info.ListenPort,
		LastReconcile: now.UTC(),
		Synced:        st.Synced,
		Reconciles:    st.Reconciles,
		Errors:        st.Errors,
		LocalPodCIDRs: prefixStrings(st.LocalPodCIDRs),
		Peers:         make([]Peer, 0, len(st.Peers)),
		Excluded:      exclusions(st.Excluded),
		Degraded:      exclusions(st.Degraded),
	}
	if info.PublicKey != (wgtypes.Key{}) {
		s.PublicKey = info.PublicKey.String()
	}
	// The status knows the current key: it changes on key rotation.
	if st.PublicKey != (wgtypes.Key{}) {
		s.PublicKey = st.PublicKey.String()
	}
	if st.Err != nil {
		s.LastError = st.Err.Error()
	}
	since := map[[2]string]time.Time{}
	if prev != nil {
		for _, p := range prev.Peers {
			since[[2]string{p.Node, p.PublicKey}] = p.Since
		}
	}
	for _, p := range st.Peers {
		q := Peer{
			Node:                       p.Node,
			PublicKey:                  p.PublicKey.String(),
			AllowedIPs:                 prefixStrings(p.AllowedIPs),
			PersistentKeepaliveSeconds: int(p.Keepalive / time.Second),
			Since:                      now.UTC(),
			RelayedVia:                 p.Via,
		}
		if p.Endpoint.IsValid() {
			q.Endpoint = p.Endpoint.String()
		}
		if t, ok := since[[2]string{q.Node, q.PublicKey}]; ok && !t.IsZero() {
			q.Since = t
		}
		s.Peers = append(s.Peers, q)
	}
	slices.SortFunc(s.Peers, func(a, b Peer) int { return cmp.Compare(a.Node, b.Node) })
	return s
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func exclusions(es []mesh.Exclusion) []Exclusion {
	out := make([]Exclusion, 0, len(es))
	for _, e := range es {
		x := Exclusion{Node: e.Node, Reason: string(e.Reason)}
		if e.Err != nil {
			x.Message = e.Err.Error()
		}
		out = append(out, x)
	}
	return out
}

// ParsedPeer is a Peer with its fields parsed.
type ParsedPeer struct {
	Node       string
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort // zero when unresolved
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
	Since      time.Time
	RelayedVia string
}

// Parse validates a peer record.
func (p Peer) Parse() (ParsedPeer, error) {
	out := ParsedPeer{Node: p.Node, Keepalive: time.Duration(p.PersistentKeepaliveSeconds) * time.Second, Since: p.Since, RelayedVia: p.RelayedVia}
	var errs []error
	if p.Node == "" {
		errs = append(errs, errors.New("empty node name"))
	}
	k, err := wgtypes.ParseKey(p.PublicKey)
	if err != nil {
		errs = append(errs, fmt.Errorf("public key %q: %w", p.PublicKey, err))
	}
	out.PublicKey = k
	if p.Endpoint != "" {
		ap, err := netip.ParseAddrPort(p.Endpoint)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint: %w", err))
		}
		out.Endpoint = ap
	}
	for _, s := range p.AllowedIPs {
		q, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("allowed ip: %w", err))
			continue
		}
		out.AllowedIPs = append(out.AllowedIPs, q.Masked())
	}
	if err := errors.Join(errs...); err != nil {
		return ParsedPeer{}, fmt.Errorf("peer %q: %w", p.Node, err)
	}
	return out, nil
}

// Validate checks the whole state: version, this node's key and every peer.
func (s *State) Validate() error {
	var errs []error
	if s.Version < 1 || s.Version > Version {
		errs = append(errs, fmt.Errorf("schema version %d, this tool reads 1-%d", s.Version, Version))
	}
	if s.Node == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if s.PublicKey != "" {
		if _, err := wgtypes.ParseKey(s.PublicKey); err != nil {
			errs = append(errs, fmt.Errorf("public key %q: %w", s.PublicKey, err))
		}
	}
	seen := map[string]bool{}
	for _, p := range s.Peers {
		if _, err := p.Parse(); err != nil {
			errs = append(errs, err)
		}
		if seen[p.Node] {
			errs = append(errs, fmt.Errorf("peer %q listed twice", p.Node))
		}
		seen[p.Node] = true
	}
	return errors.Join(errs...)
}
