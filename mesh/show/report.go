// Package show is the logic of wgmeshctl: it puts a WireGuard device
// snapshot next to what the agent wants (its state file, or the same
// computation over the API's Nodes), judges every peer's health, and
// renders the result as wg-show-like text, JSON, YAML, a wg-quick style
// config, a Graphviz graph or check lines. It does no I/O: callers pass
// the device, the state and the clock.
package show

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// DefaultHandshakeTimeout is how long a peer may go without a handshake
// while traffic is expected before it is reported as no-handshake.
// WireGuard re-handshakes every 2 minutes while packets flow (plus a
// keepalive interval and jitter), so 3 minutes never flags a live peer.
const DefaultHandshakeTimeout = 3 * time.Minute

// Health is one word describing a peer.
type Health string

// Health words, from the most to the least severe (a peer's Health is its
// most severe problem).
const (
	// Missing: the agent wants a peer for a node (it is in the state file
	// or the API), but the device has no peer with that node's key.
	Missing Health = "missing"
	// Unexpected: the device has a peer whose key no desired node has.
	Unexpected Health = "unexpected"
	// AllowedIPsDrift: the device peer's allowed IPs differ from the
	// node's pod CIDRs.
	AllowedIPsDrift Health = "allowed-ips-drift"
	// StaleEndpoint: the device's endpoint for the peer differs from the
	// endpoint the node publishes (or the device has none), and there was
	// no handshake within the timeout. A roamed endpoint with a recent
	// handshake is fine: WireGuard follows a peer that moved (e.g. NAT).
	StaleEndpoint Health = "stale-endpoint"
	// NoHandshake: traffic is expected but no handshake completed within
	// the timeout, counting from when the agent first wanted the peer.
	// Traffic is expected when the device has a persistent keepalive for
	// the peer (it sends one at least every interval, and WireGuard
	// re-handshakes every 2 minutes while sending), or when the device has
	// sent the peer bytes (handshake initiations) but never completed a
	// handshake. An idle peer without keepalive whose last handshake is
	// old is normal WireGuard behaviour and is not flagged.
	NoHandshake Health = "no-handshake"
	// OK: none of the above.
	OK Health = "ok"
	// Unknown: there is no record of what the agent wants (no state file
	// and no API access), so only the device is shown.
	Unknown Health = "unknown"
)

var severity = map[Health]int{Missing: 0, Unexpected: 1, AllowedIPsDrift: 2, StaleEndpoint: 3, NoHandshake: 4}

// Sources of the desired state.
const (
	SourceStateFile = "state-file"
	SourceAPI       = "api"
	SourceNone      = "none"
)

// Report is everything the renderers show. Its JSON field names are the
// stable `wgmeshctl show -o json|yaml` schema: fields may be added, never
// renamed or removed.
type Report struct {
	// Interface is the WireGuard interface name.
	Interface string `json:"interface"`
	// Node is this node's name (from the agent state; empty if unknown).
	Node string `json:"node,omitempty"`
	// PublicKey and ListenPort are the device's.
	PublicKey    string `json:"publicKey"`
	ListenPort   int    `json:"listenPort"`
	FirewallMark int    `json:"fwmark,omitempty"`
	// Time is when the snapshot was judged.
	Time time.Time `json:"time"`
	// HandshakeTimeoutSeconds is the no-handshake / stale-endpoint window.
	HandshakeTimeoutSeconds int64 `json:"handshakeTimeoutSeconds"`
	// Source of the desired peers: "state-file", "api" or "none".
	Source string `json:"source"`
	// Agent is the agent's last recorded pass (absent with source none).
	Agent *AgentInfo `json:"agent,omitempty"`
	// Healthy is true when every peer is ok (what `check` exits 0 on).
	Healthy bool `json:"healthy"`
	// Warnings are problems with the inputs themselves (e.g. a state file
	// written for another key).
	Warnings []string `json:"warnings,omitempty"`
	// Peers: desired peers sorted by node name (including missing ones),
	// then unexpected device peers sorted by public key.
	Peers []Peer `json:"peers"`
	// Excluded nodes, sorted by name.
	Excluded []Excluded `json:"excluded"`

	privateKey   wgtypes.Key
	presharedKey map[string]wgtypes.Key
}

// AgentInfo is what the agent recorded about its last reconcile pass.
type AgentInfo struct {
	LastReconcile time.Time `json:"lastReconcile"`
	LastError     string    `json:"lastError,omitempty"`
	Synced        bool      `json:"synced"`
}

// Peer is one peer, on the device or wanted there.
type Peer struct {
	// Node is the node this peer stands for; empty for unexpected peers.
	Node      string `json:"node,omitempty"`
	PublicKey string `json:"publicKey"`
	// Health is the most severe problem's word, or ok (unknown without
	// desired state).
	Health Health `json:"health"`
	// Problems lists every problem with a human-readable detail.
	Problems []Problem `json:"problems,omitempty"`
	// OnDevice is false for missing peers.
	OnDevice bool `json:"onDevice"`
	// Endpoint and AllowedIPs are the device's (as `wg show`).
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowedIPs"`
	// DesiredEndpoint and DesiredAllowedIPs are what the node publishes.
	DesiredEndpoint   string   `json:"desiredEndpoint,omitempty"`
	DesiredAllowedIPs []string `json:"desiredAllowedIPs,omitempty"`
	// RelayedVia names the relay node the pod traffic to this peer goes
	// through (its pod CIDRs are on the relay's peer); absent when direct.
	RelayedVia string `json:"relayedVia,omitempty"`
	// LatestHandshake is absent when there was none.
	LatestHandshake *time.Time `json:"latestHandshake,omitempty"`
	// HandshakeAgeSeconds is Time minus LatestHandshake, absent with it.
	HandshakeAgeSeconds *int64 `json:"handshakeAgeSeconds,omitempty"`
	RxBytes             int64  `json:"rxBytes"`
	TxBytes             int64  `json:"txBytes"`
	// PersistentKeepaliveSeconds is the device's, 0 = off.
	PersistentKeepaliveSeconds int `json:"persistentKeepaliveSeconds"`
	// DesiredSince is when the agent first wanted this peer.
	DesiredSince *time.Time `json:"desiredSince,omitempty"`
	// Degraded holds warnings the agent recorded for the node.
	Degraded []Reason `json:"degraded,omitempty"`
}

// Problem is one health problem of a peer.
type Problem struct {
	Health Health `json:"health"`
	Detail string `json:"detail"`
}

// Reason is a recorded warning: a mesh.Reason word and a message.
type Reason struct {
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Excluded is a node the agent leaves out of the mesh.
type Excluded struct {
	Node    string `json:"node"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Input is what Evaluate judges.
type Input struct {
	// Device is the live device snapshot; required.
	Device *wgtypes.Device
	// State is the desired state (the agent's file, or one built from the
	// API); nil when neither is available.
	State *agentstate.State
	// Source names where State came from (SourceStateFile or SourceAPI).
	Source string
	// Now is the time to judge at.
	Now time.Time
	// HandshakeTimeout; zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// Evaluate judges every peer. Malformed peer records in the state (which
// agentstate.Read already refuses) are reported as warnings and skipped.
func Evaluate(in Input) Report {
	timeout := cmp.Or(in.HandshakeTimeout, DefaultHandshakeTimeout)
	dev := in.Device
	if dev == nil {
		dev = &wgtypes.Device{}
	}
	r := Report{
		Interface:               dev.Name,
		ListenPort:              dev.ListenPort,
		FirewallMark:            dev.FirewallMark,
		Time:                    in.Now.UTC(),
		HandshakeTimeoutSeconds: int64(timeout / time.Second),
		Source:                  SourceNone,
		Peers:                   []Peer{},
		Excluded:                []Excluded{},
		privateKey:              dev.PrivateKey,
		presharedKey:            map[string]wgtypes.Key{},
	}
	if dev.PublicKey != (wgtypes.Key{}) {
		r.PublicKey = dev.PublicKey.String()
	}
	devPeers := map[wgtypes.Key]*wgtypes.Peer{}
	for i := range dev.Peers {
		p := &dev.Peers[i]
		devPeers[p.PublicKey] = p
		if p.PresharedKey != (wgtypes.Key{}) {
			r.presharedKey[p.PublicKey.String()] = p.PresharedKey
		}
	}

	st := in.State
	if st == nil {
		for _, p := range dev.Peers {
			q := devicePeer(&p, in.Now)
			q.Health = Unknown
			r.Peers = append(r.Peers, q)
		}
		sortByKey(r.Peers)
		r.Healthy = false
		r.Warnings = append(r.Warnings, "no record of the desired mesh (agent state file or API): node names and health unknown")
		return r
	}

	r.Source = cmp.Or(in.Source, SourceStateFile)
	r.Node = st.Node
	if !st.LastReconcile.IsZero() {
		r.Agent = &AgentInfo{LastReconcile: st.LastReconcile.UTC(), LastError: st.LastError, Synced: st.Synced}
	}
	if st.PublicKey != "" && r.PublicKey != "" && st.PublicKey != r.PublicKey {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the agent state is for public key %s but the device has %s: node names and health may be wrong", st.PublicKey, r.PublicKey))
	}
	if st.Interface != "" && dev.Name != "" && st.Interface != dev.Name {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the agent state is for interface %s, not %s", st.Interface, dev.Name))
	}

	degraded := map[string][]Reason{}
	for _, e := range st.Degraded {
		degraded[e.Node] = append(degraded[e.Node], Reason{Reason: e.Reason, Message: e.Message})
	}
	for _, e := range st.Excluded {
		r.Excluded = append(r.Excluded, Excluded(e))
	}
	slices.SortFunc(r.Excluded, func(a, b Excluded) int { return cmp.Compare(a.Node, b.Node) })

	wanted := map[wgtypes.Key]bool{}
	var desired []Peer
	for _, rec := range st.Peers {
		dp, err := rec.Parse()
		if err != nil {
			r.Warnings = append(r.Warnings, "skipped a malformed peer record: "+err.Error())
			continue
		}
		wanted[dp.PublicKey] = true
		desired = append(desired, judge(dp, devPeers[dp.PublicKey], degraded[dp.Node], in.Now, timeout))
	}
	slices.SortFunc(desired, func(a, b Peer) int { return cmp.Compare(a.Node, b.Node) })

	var unexpected []Peer
	for i := range dev.Peers {
		p := &dev.Peers[i]
		if wanted[p.PublicKey] {
			continue
		}
		q := devicePeer(p, in.Now)
		q.Problems = []Problem{{Health: Unexpected, Detail: "no node in the mesh has this public key"}}
		q.Health = Unexpected
		unexpected = append(unexpected, q)
	}
	sortByKey(unexpected)

	r.Peers = append(append(r.Peers, desired...), unexpected...)
	r.Healthy = true
	for _, p := range r.Peers {
		if p.Health != OK {
			r.Healthy = false
		}
	}
	return r
}

func sortByKey(ps []Peer) {
	slices.SortFunc(ps, func(a, b Peer) int { return cmp.Compare(a.PublicKey, b.PublicKey) })
}

// devicePeer fills the device-side fields of a report peer.
func devicePeer(p *wgtypes.Peer, now time.Time) Peer {
	q := Peer{
		PublicKey:                  p.PublicKey.String(),
		OnDevice:                   true,
		AllowedIPs:                 prefixStrings(prefixesOf(p.AllowedIPs)),
		RxBytes:                    p.ReceiveBytes,
		TxBytes:                    p.TransmitBytes,
		PersistentKeepaliveSeconds: int(p.PersistentKeepaliveInterval / time.Second),
	}
	if ap, ok := addrPort(p.Endpoint); ok {
		q.Endpoint = ap.String()
	}
	if !p.LastHandshakeTime.IsZero() {
		hs := p.LastHandshakeTime.UTC()
		age := now.Unix() - hs.Unix()
		q.LatestHandshake = &hs
		q.HandshakeAgeSeconds = &age
	}
	return q
}

// judge compares one desired peer with its device peer (nil if absent).
func judge(dp agentstate.ParsedPeer, d *wgtypes.Peer, degraded []Reason, now time.Time, timeout time.Duration) Peer {
	var q Peer
	if d != nil {
		q = devicePeer(d, now)
	} else {
		q = Peer{PublicKey: dp.PublicKey.String(), AllowedIPs: []string{}}
	}
	q.Node = dp.Node
	q.DesiredAllowedIPs = prefixStrings(sortedPrefixes(dp.AllowedIPs))
	q.RelayedVia = dp.RelayedVia
	if dp.Endpoint.IsValid() {
		q.DesiredEndpoint = dp.Endpoint.String()
	}
	if !dp.Since.IsZero() {
		s := dp.Since.UTC()
		q.DesiredSince = &s
	}
	q.Degraded = degraded

	add := func(h Health, format string, args ...any) {
		q.Problems = append(q.Problems, Problem{Health: h, Detail: fmt.Sprintf(format, args...)})
	}
	if d == nil {
		add(Missing, "node %s is in the mesh but the device has no peer with its public key", dp.Node)
	} else {
		if !slices.Equal(q.AllowedIPs, q.DesiredAllowedIPs) {
			add(AllowedIPsDrift, "device allows [%s] but node %s has pod CIDRs [%s]",
				listOrNone(q.AllowedIPs), dp.Node, listOrNone(q.DesiredAllowedIPs))
		}
		// The reference point for "no handshake in the window" is the later
		// of the last handshake and when the agent started wanting the peer,
		// so a just-added peer gets a full window to complete one.
		ref := d.LastHandshakeTime
		if dp.Since.After(ref) {
			ref = dp.Since
		}
		quiet := ref.IsZero() || now.Sub(ref) > timeout
		devEP, _ := addrPort(d.Endpoint)
		if dp.Endpoint.IsValid() && devEP != dp.Endpoint && quiet {
			have := "no endpoint"
			if devEP.IsValid() {
				have = devEP.String()
			}
			add(StaleEndpoint, "device has %s, node %s publishes %s, and no handshake in %s",
				have, dp.Node, dp.Endpoint, PrettyDuration(timeout))
		}
		keepalive := d.PersistentKeepaliveInterval > 0
		neverAnswered := d.LastHandshakeTime.IsZero() && d.TransmitBytes > 0
		if quiet && (keepalive || neverAnswered) {
			why := "persistent keepalive is on"
			if !keepalive {
				why = Bytes(d.TransmitBytes) + " sent and never a handshake"
			}
			last := "never"
			if !d.LastHandshakeTime.IsZero() {
				last = Ago(d.LastHandshakeTime, now)
			}
			add(NoHandshake, "no handshake in %s while traffic is expected (%s); latest handshake: %s",
				PrettyDuration(timeout), why, last)
		}
	}
	q.Health = OK
	if len(q.Problems) > 0 {
		slices.SortStableFunc(q.Problems, func(a, b Problem) int { return cmp.Compare(severity[a.Health], severity[b.Health]) })
		q.Health = q.Problems[0].Health
	}
	return q
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ", ")
}

func addrPort(a *net.UDPAddr) (netip.AddrPort, bool) {
	if a == nil {
		return netip.AddrPort{}, false
	}
	ap := a.AddrPort()
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

func prefixesOf(nets []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		if p, ok := nodenet.PrefixFromIPNet(n); ok {
			out = append(out, p.Masked())
		}
	}
	return sortedPrefixes(out)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	return slices.Compact(ps)
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
