package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// External peers: WireGuard peers that are not Kubernetes nodes (an
// operator's laptop, a VM, a site router), declared as cluster-scoped Peer
// objects (group wgmesh.io, version v1alpha1). Every agent adds every
// valid Peer to its device, so the peer reaches each node's pods directly;
// `wgmeshctl peer-config` prints the peer's side.

// PeerCondition is the condition type an agent sets on a Peer's status.
const PeerCondition = "Accepted"

// RawExternalPeer is a Peer object as the API shows it, reduced to what the
// mesh reads. Adapters fill it without validating anything.
type RawExternalPeer struct {
	Name       string
	UID        string
	Generation int64
	Created    time.Time
	PublicKey  string
	AllowedIPs []string
	// Endpoint is spec.endpoint ("" if unset).
	Endpoint string
	// Keepalive is spec.persistentKeepalive in seconds, nil if unset.
	Keepalive *int64
	// Status is the Peer's current PeerCondition as the API shows it.
	Status PeerStatus
}

// PeerStatus is a Peer's PeerCondition: "True" with an empty reason, or
// "False" with the reason (a Reason) and a message.
type PeerStatus struct {
	Accepted           string
	Reason, Message    string
	ObservedGeneration int64
}

// ExternalPeer is a validated Peer.
type ExternalPeer struct {
	Name       string
	PublicKey  wgtypes.Key
	AllowedIPs []netip.Prefix
	// Endpoint is the zero value when the Peer has none: the peer then
	// dials the nodes and WireGuard learns its address.
	Endpoint  netip.AddrPort
	Keepalive *time.Duration
	Created   time.Time
}

// ExternalPeerSource is implemented by a NodeSource that also lists the
// cluster's Peer objects; the reconciler adds the valid ones to the device.
// Its Changed channel signals Peer changes too, and HasSynced covers them.
type ExternalPeerSource interface {
	ExternalPeers() ([]RawExternalPeer, error)
	// ReportPeer sets the Peer's PeerCondition to st and, when st refuses
	// the Peer, records a Warning Event on it.
	ReportPeer(ctx context.Context, peer RawExternalPeer, st PeerStatus) error
}

// ExternalPeerNode is the Peer.Node of an external peer's WireGuard peer:
// "peer:" and the Peer's name. A colon never appears in a Node name, so it
// cannot collide with one.
func ExternalPeerNode(name string) string { return "peer:" + name }

// Reasons a Peer is refused (besides ReasonBadPublicKey, ReasonBadEndpoint,
// ReasonBadKeepalive, ReasonDuplicateKey).
const (
	ReasonNoAllowedIPs         Reason = "no-allowed-ips"
	ReasonBadAllowedIPs        Reason = "bad-allowed-ips"
	ReasonOverlapsPodCIDR      Reason = "overlaps-pod-cidr"
	ReasonOverlapsExternalPeer Reason = "overlaps-other-peer"
)

// ParseExternalPeers validates the Peers against the cluster's Nodes and
// each other. A Peer is refused for a bad key, a key a Node or an older
// Peer uses, bad or missing allowed IPs, allowed IPs overlapping a Node's
// pod CIDRs (the Node always wins: a Peer never takes pod traffic away from
// a Node) or an older Peer's allowed IPs, a bad endpoint (an IP literal and
// port) or a bad keepalive. Refusing one Peer leaves everything else as it
// was. Every agent sees the same Nodes and Peers and so reaches the same
// verdicts. Valid peers come sorted by name, refusals by name.
func ParseExternalPeers(raws []RawExternalPeer, list NodeList) ([]ExternalPeer, []Exclusion) {
	type nodeKey struct {
		name string
		key  wgtypes.Key
	}
	var nodeKeys []nodeKey
	var podCIDRs []struct {
		node string
		p    netip.Prefix
	}
	addNode := func(name string, cidrs []netip.Prefix) {
		for _, p := range cidrs {
			podCIDRs = append(podCIDRs, struct {
				node string
				p    netip.Prefix
			}{name, p})
		}
	}
	for _, n := range list.Nodes {
		nodeKeys = append(nodeKeys, nodeKey{n.Name, n.PublicKey})
		addNode(n.Name, n.PodCIDRs)
	}
	if list.Own != nil {
		// Our own Node counts exactly when the other agents count it:
		// when it parses as a peer (key, endpoint and pod CIDRs
		// published). Counting our pod CIDRs or key earlier (before our
		// key or endpoint is out) would refuse on this node a Peer that
		// every other node accepts.
		if n := list.Own.Peer; n != nil {
			nodeKeys = append(nodeKeys, nodeKey{list.SelfName, n.PublicKey})
			addNode(list.SelfName, n.PodCIDRs)
		}
	}

	sorted := slices.Clone(raws)
	slices.SortFunc(sorted, func(a, b RawExternalPeer) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	var valid []ExternalPeer
	var bad []Exclusion
	refuse := func(name string, r Reason, err error) { bad = append(bad, Exclusion{Node: name, Reason: r, Err: err}) }
next:
	for _, raw := range sorted {
		p, r, err := parseExternalPeer(raw)
		if err != nil {
			refuse(raw.Name, r, err)
			continue
		}
		for _, nk := range nodeKeys {
			if nk.key == p.PublicKey {
				refuse(raw.Name, ReasonDuplicateKey, fmt.Errorf("public key %s is node %q's", p.PublicKey, nk.name))
				continue next
			}
		}
		for _, a := range p.AllowedIPs {
			for _, nc := range podCIDRs {
				if a.Overlaps(nc.p) {
					refuse(raw.Name, ReasonOverlapsPodCIDR, fmt.Errorf("allowed IP %s overlaps pod CIDR %s of node %q", a, nc.p, nc.node))
					continue next
				}
			}
		}
		for _, o := range valid {
			if o.PublicKey == p.PublicKey {
				refuse(raw.Name, ReasonDuplicateKey, fmt.Errorf("public key %s is already used by peer %q", p.PublicKey, o.Name))
				continue next
			}
			if a, b, ok := firstOverlap(p.AllowedIPs, o.AllowedIPs); ok {
				refuse(raw.Name, ReasonOverlapsExternalPeer, fmt.Errorf("allowed IP %s overlaps %s of peer %q", a, b, o.Name))
				continue next
			}
		}
		valid = append(valid, p)
	}
	slices.SortFunc(valid, func(a, b ExternalPeer) int { return cmp.Compare(a.Name, b.Name) })
	sortExclusions(bad)
	return valid, bad
}

func parseExternalPeer(raw RawExternalPeer) (ExternalPeer, Reason, error) {
	p := ExternalPeer{Name: raw.Name, Created: raw.Created}
	k, err := ParsePublicKey(raw.PublicKey)
	if err != nil {
		return p, ReasonBadPublicKey, fmt.Errorf("spec.publicKey: %w", err)
	}
	p.PublicKey = k
	if len(raw.AllowedIPs) == 0 {
		return p, ReasonNoAllowedIPs, fmt.Errorf("spec.allowedIPs is %w", ErrMissing)
	}
	if p.AllowedIPs, err = parsePrefixes(raw.AllowedIPs, "allowed IP"); err != nil {
		return p, ReasonBadAllowedIPs, err
	}
	if strings.TrimSpace(raw.Endpoint) != "" {
		ep, err := ParseEndpoint(raw.Endpoint)
		if err != nil {
			return p, ReasonBadEndpoint, fmt.Errorf("spec.endpoint: %w", err)
		}
		ap, ok := ep.AddrPort()
		if !ok {
			return p, ReasonBadEndpoint, fmt.Errorf("%w spec.endpoint %q: want an IP address and port", ErrMalformed, raw.Endpoint)
		}
		p.Endpoint = ap
	}
	if raw.Keepalive != nil {
		s := *raw.Keepalive
		if s < 0 || s > int64(MaxKeepalive/time.Second) {
			return p, ReasonBadKeepalive, fmt.Errorf("%w spec.persistentKeepalive %d: want 0-65535 seconds", ErrMalformed, s)
		}
		d := time.Duration(s) * time.Second
		p.Keepalive = &d
	}
	return p, "", nil
}

// WithExternal adds the external peers to d: a WireGuard peer each and
// routes to their allowed IPs through the device. The keepalive is the
// Peer's own, else this node's default.
func WithExternal(d Desired, peers []ExternalPeer, defaultKA time.Duration) Desired {
	if len(peers) == 0 {
		return d
	}
	d.Peers = slices.Clone(d.Peers)
	d.Routes = slices.Clone(d.Routes)
	for _, e := range peers {
		ka := defaultKA
		if e.Keepalive != nil {
			ka = *e.Keepalive
		}
		d.Peers = append(d.Peers, Peer{Node: ExternalPeerNode(e.Name), PublicKey: e.PublicKey,
			Endpoint: e.Endpoint, AllowedIPs: e.AllowedIPs, Keepalive: ka})
		d.Routes = append(d.Routes, e.AllowedIPs...)
	}
	slices.SortFunc(d.Peers, func(a, b Peer) int { return cmp.Compare(a.Node, b.Node) })
	sortPrefixes(d.Routes)
	return d
}

// peerStatusFor is the PeerCondition a Peer should show: accepted, or
// refused with the reason.
func peerStatusFor(raw RawExternalPeer, refused map[string]Exclusion) PeerStatus {
	st := PeerStatus{Accepted: "True", ObservedGeneration: raw.Generation}
	if e, ok := refused[raw.Name]; ok {
		st.Accepted, st.Reason, st.Message = "False", string(e.Reason), e.Err.Error()
	}
	return st
}

// reportsPeers reports whether this node writes the Peers' status: the
// listed Node with the smallest name does, so that one agent writes, not
// all of them (they would all write the same).
func reportsPeers(raws []RawNode, self string) bool {
	if len(raws) == 0 {
		return false
	}
	first := raws[0].Name
	for _, r := range raws[1:] {
		first = min(first, r.Name)
	}
	return first == self
}

// externalPass is the external-peer step of a pass: it lists and validates
// the Peers, and (on the reporting node) brings their status in line. It
// returns the valid peers; nil, nil when the source has no Peers.
func (r *Reconciler) externalPass(ctx context.Context, raws []RawNode, list NodeList) ([]ExternalPeer, []Exclusion, error) {
	src, ok := r.cfg.Source.(ExternalPeerSource)
	if !ok {
		return nil, nil, nil
	}
	rawPeers, err := src.ExternalPeers()
	if err != nil {
		return nil, nil, fmt.Errorf("list peers: %w", err)
	}
	valid, refused := ParseExternalPeers(rawPeers, list)
	if !reportsPeers(raws, r.cfg.NodeName) {
		return valid, refused, nil
	}
	byName := make(map[string]Exclusion, len(refused))
	for _, e := range refused {
		byName[e.Node] = e
	}
	var errs []error
	for _, raw := range rawPeers {
		st := peerStatusFor(raw, byName)
		if st == raw.Status {
			continue
		}
		if err := src.ReportPeer(ctx, raw, st); err != nil {
			errs = append(errs, fmt.Errorf("report status of peer %q: %w", raw.Name, err))
			continue
		}
		if st.Accepted == "True" {
			r.log.Info("external peer accepted", "peer", raw.Name)
		} else {
			r.log.Warn("external peer refused", "peer", raw.Name, "reason", st.Reason, "err", st.Message)
		}
	}
	return valid, refused, errors.Join(errs...)
}

// externalState is what the last pass knew of the external peers.
type externalState struct {
	valid   []ExternalPeer
	refused []Exclusion
}

// external is externalPass for a reconcile pass: a failed listing keeps
// the last pass's peers (dropping them would cut working sessions over a
// cache hiccup), and a change in the valid peers rules out the incremental
// path, which knows only Node changes.
func (r *Reconciler) external(ctx context.Context, raws []RawNode, list NodeList) ([]ExternalPeer, error) {
	valid, refused, err := r.externalPass(ctx, raws, list)
	if valid == nil && refused == nil && err != nil {
		return r.ext.valid, err
	}
	if !slices.EqualFunc(valid, r.ext.valid, sameExternalPeer) {
		r.last.valid = false
	}
	r.ext = externalState{valid: valid, refused: refused}
	r.status.RefusedPeers = refused
	return valid, err
}

func sameExternalPeer(a, b ExternalPeer) bool {
	return a.Name == b.Name && a.PublicKey == b.PublicKey && slices.Equal(a.AllowedIPs, b.AllowedIPs) &&
		a.Endpoint == b.Endpoint && (a.Keepalive == nil) == (b.Keepalive == nil) &&
		(a.Keepalive == nil || *a.Keepalive == *b.Keepalive) && a.Created.Equal(b.Created)
}
