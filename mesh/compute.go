package mesh

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Self is this node as the computation needs it.
type Self struct {
	Name      string
	PublicKey wgtypes.Key
	// PodCIDRs are the local pod prefixes; may be empty while the node has
	// none assigned yet.
	PodCIDRs []netip.Prefix
	// Keepalive is this node's own wgmesh.io/persistent-keepalive, nil if
	// unset. It is the default toward peers without an annotation of
	// their own, so that a node behind a NAT, annotated once, keeps its
	// NAT mapping open toward every peer (and every peer toward it).
	Keepalive *time.Duration
	// Location is this node's location (LocationOf), "" for none: peers
	// of the same location are dialled at their private endpoints.
	Location string
}

// Input is everything Compute needs. It holds no I/O handles: DNS names are
// resolved by the caller beforehand.
type Input struct {
	Self Self
	// Parsed is the node list parsed once (ParseNodes with Self.Name), as a
	// reconcile pass has it. Its own entry is not read: Self is.
	Parsed *NodeList
	// Nodes is the raw node list, parsed by Compute when Parsed is nil
	// (for one-off callers); the entry named Self.Name is skipped.
	Nodes []RawNode
	// DefaultKeepalive applies to peers when neither the peer's Node nor
	// this node's (Self.Keepalive) has a keepalive annotation.
	DefaultKeepalive time.Duration
	// Resolved maps an endpoint DNS name (as ParseEndpoint normalises it)
	// to its address. IP literal endpoints need no entry.
	Resolved map[string]netip.Addr
	// Configured describes the peers already on the device (public key to
	// allowed IPs). In a conflict the node that is already configured
	// keeps its place, so a newcomer never disturbs a working peer.
	Configured map[wgtypes.Key][]netip.Prefix
	// KnownKeys maps a node name to the public key it had when this node
	// last configured it. A node whose key changed since (key rotation)
	// keeps the incumbency of its previous key's peer, so rotating never
	// hands its place to a conflicting node. Optional.
	KnownKeys map[string]wgtypes.Key
}

// ConfiguredFrom extracts Input.Configured from a device. A nil device
// yields nil.
func ConfiguredFrom(dev *wgtypes.Device) map[wgtypes.Key][]netip.Prefix {
	if dev == nil {
		return nil
	}
	m := make(map[wgtypes.Key][]netip.Prefix, len(dev.Peers))
	for _, p := range dev.Peers {
		m[p.PublicKey] = prefixesFromIPNets(p.AllowedIPs)
	}
	return m
}

type candidate struct {
	node      Node
	incumbent bool
}

// Compute turns the node list into the peers and routes this node should
// have. It is pure and deterministic: the same input gives the same output.
//
// Conflicts are settled without collateral damage: when two nodes share a
// public key or have overlapping podCIDRs, the incumbent (already on the
// device with that key and prefixes) wins, else the older node, else the
// lexically smaller name; only the loser is excluded.
func Compute(in Input) Desired {
	list := in.Parsed
	if list == nil {
		l := ParseNodes(in.Nodes, in.Self.Name)
		list = &l
	}
	var d Desired
	d.Excluded = append(d.Excluded, list.Invalid...)
	// Sized up front: growing these by appending was a third of Compute's
	// time at 5000 nodes.
	cands := make([]candidate, 0, len(list.Nodes))
	for _, n := range list.Nodes {
		if n.PublicKey == in.Self.PublicKey {
			d.Excluded = append(d.Excluded, Exclusion{Node: n.Name, Reason: ReasonSameKeyAsSelf,
				Err: fmt.Errorf("public key %s is this node's own key", n.PublicKey)})
			continue
		}
		if p, q, ok := firstOverlap(n.PodCIDRs, in.Self.PodCIDRs); ok {
			d.Excluded = append(d.Excluded, Exclusion{Node: n.Name, Reason: ReasonOverlapsSelfCIDR,
				Err: fmt.Errorf("pod CIDR %s overlaps local pod CIDR %s", p, q)})
			continue
		}
		cands = append(cands, candidate{node: n, incumbent: isIncumbent(n, in.Configured, in.KnownKeys)})
	}

	slices.SortFunc(cands, func(a, b candidate) int {
		if a.incumbent != b.incumbent {
			if a.incumbent {
				return -1
			}
			return 1
		}
		if c := a.node.Created.Compare(b.node.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.node.Name, b.node.Name)
	})

	keyOwner := make(map[wgtypes.Key]string, len(cands))
	accepted := make([]Node, 0, len(cands))
	// Only candidates whose prefixes overlap another candidate's can lose a
	// CIDR conflict, so only they are compared pairwise, and only against
	// accepted nodes of their kind: with thousands of nodes and no
	// overlaps the pairwise scan over all accepted nodes was quadratic and
	// most of a reconcile's CPU (integration/bench scale profile).
	conflict := conflicting(cands)
	var contested []Node
	for i, c := range cands {
		n := c.node
		if owner, dup := keyOwner[n.PublicKey]; dup {
			d.Excluded = append(d.Excluded, Exclusion{Node: n.Name, Reason: ReasonDuplicateKey,
				Err: fmt.Errorf("public key %s is already used by node %q", n.PublicKey, owner)})
			continue
		}
		if conflict[i] {
			if other, p, q, ok := overlapWith(n, contested); ok {
				d.Excluded = append(d.Excluded, Exclusion{Node: n.Name, Reason: ReasonOverlappingCIDR,
					Err: fmt.Errorf("pod CIDR %s overlaps %s of node %q", p, q, other)})
				continue
			}
			contested = append(contested, n)
		}
		keyOwner[n.PublicKey] = n.Name
		accepted = append(accepted, n)
	}

	if len(accepted) > 0 {
		d.Peers = make([]Peer, 0, len(accepted))
		d.Routes = make([]netip.Prefix, 0, len(accepted))
	}
	for _, n := range accepted {
		p, deg, degraded := peerFor(towards(n, in.Self), in.Self.Keepalive, in.DefaultKeepalive, in.Resolved)
		if degraded {
			d.Degraded = append(d.Degraded, deg)
		}
		d.Peers = append(d.Peers, p)
		d.Routes = append(d.Routes, n.PodCIDRs...)
	}

	slices.SortFunc(d.Peers, func(a, b Peer) int { return cmp.Compare(a.Node, b.Node) })
	sortPrefixes(d.Routes)
	sortExclusions(d.Excluded)
	sortExclusions(d.Degraded)
	return d
}

// peerFor makes the peer of an accepted node: its keepalive (its own, else
// ours, else the default) and its endpoint, or the reason it is degraded.
func peerFor(n Node, selfKA *time.Duration, defaultKA time.Duration, resolved map[string]netip.Addr) (Peer, Exclusion, bool) {
	ka := defaultKA
	switch {
	case n.Keepalive != nil:
		ka = *n.Keepalive
	case selfKA != nil:
		ka = *selfKA
	}
	p := Peer{Node: n.Name, PublicKey: n.PublicKey, AllowedIPs: n.PodCIDRs, Keepalive: ka}
	if ap, ok := n.Endpoint.AddrPort(); ok {
		p.Endpoint = ap
	} else if a, ok := resolved[n.Endpoint.Host]; ok && a.IsValid() {
		p.Endpoint = netip.AddrPortFrom(a.Unmap(), n.Endpoint.Port)
	} else {
		return p, Exclusion{Node: n.Name, Reason: ReasonUnresolvable,
			Err: fmt.Errorf("endpoint host %q did not resolve; peer kept without an endpoint", n.Endpoint.Host)}, true
	}
	return p, Exclusion{}, false
}

func exclusion(node string, err error) Exclusion {
	var ne *NodeError
	if errors.As(err, &ne) {
		return Exclusion{Node: node, Reason: ne.Reason, Err: ne.Err}
	}
	return Exclusion{Node: node, Reason: ReasonBadPodCIDR, Err: err}
}

// isIncumbent reports whether the device already has a peer with n's key,
// or with the key n had when we configured it, whose allowed IPs cover all
// of n's pod prefixes.
func isIncumbent(n Node, configured map[wgtypes.Key][]netip.Prefix, known map[string]wgtypes.Key) bool {
	have, ok := configured[n.PublicKey]
	if !ok {
		prev, known := known[n.Name]
		if !known {
			return false
		}
		if have, ok = configured[prev]; !ok {
			return false
		}
	}
	for _, p := range n.PodCIDRs {
		if !slices.Contains(have, p) {
			return false
		}
	}
	return true
}

func firstOverlap(a, b []netip.Prefix) (netip.Prefix, netip.Prefix, bool) {
	for _, p := range a {
		for _, q := range b {
			if p.Overlaps(q) {
				return p, q, true
			}
		}
	}
	return netip.Prefix{}, netip.Prefix{}, false
}

// conflicting reports, per candidate, whether one of its pod prefixes
// overlaps a prefix of another candidate. Prefixes are aligned blocks, so
// two overlap exactly when one contains the other: sorted by address (the
// shorter first at equal addresses), each prefix overlaps exactly the
// chain of still-open prefixes that contain its first address.
func conflicting(cands []candidate) []bool {
	type entry struct {
		p netip.Prefix
		i int
	}
	var es []entry
	for i, c := range cands {
		for _, p := range c.node.PodCIDRs {
			es = append(es, entry{p.Masked(), i})
		}
	}
	slices.SortFunc(es, func(a, b entry) int { return comparePrefix(a.p, b.p) })
	out := make([]bool, len(cands))
	var open []entry // each contains the next
	for _, e := range es {
		for len(open) > 0 && !open[len(open)-1].p.Contains(e.p.Addr()) {
			open = open[:len(open)-1]
		}
		for _, o := range open {
			if o.i != e.i {
				out[o.i], out[e.i] = true, true
			}
		}
		open = append(open, e)
	}
	return out
}

func overlapWith(n Node, accepted []Node) (string, netip.Prefix, netip.Prefix, bool) {
	for _, o := range accepted {
		if p, q, ok := firstOverlap(n.PodCIDRs, o.PodCIDRs); ok {
			return o.Name, p, q, true
		}
	}
	return "", netip.Prefix{}, netip.Prefix{}, false
}

func sortExclusions(e []Exclusion) {
	slices.SortFunc(e, func(a, b Exclusion) int {
		if c := cmp.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return cmp.Compare(a.Reason, b.Reason)
	})
}

// comparePrefix orders by address family, then address, then length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func sortPrefixes(p []netip.Prefix) { slices.SortFunc(p, comparePrefix) }

func prefixesFromIPNets(nets []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		if p, ok := nodenet.PrefixFromIPNet(n); ok {
			out = append(out, p.Masked())
		}
	}
	sortPrefixes(out)
	return out
}

func ipNetsFromPrefixes(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{
			IP:   net.IP(p.Addr().AsSlice()),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		})
	}
	return out
}
