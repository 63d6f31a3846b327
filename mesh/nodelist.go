package mesh

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// NodeList is a node list parsed once: each other node as a prospective
// peer, or with the reason it cannot be one, and this node's own entry. A
// reconcile pass parses the list once and hands it to the endpoint
// resolver, the own-object code and Compute; wgmeshctl does the same.
type NodeList struct {
	// SelfName names this node; no entry of that name is among Nodes or
	// Invalid.
	SelfName string
	// Own is this node's own entry, nil while its Node is not listed.
	Own *OwnEntry
	// Nodes are the other nodes that parsed, in list order.
	Nodes []Node
	// Invalid are the other nodes that did not parse, in list order.
	Invalid []Exclusion
}

// OwnEntry is this node's own Node. It is not parsed as a peer: our key and
// endpoint on it are ours to publish, not to read. A problem with it is
// reported, not fatal: the node still configures its peers.
type OwnEntry struct {
	Raw RawNode
	// PodCIDRs are our pod prefixes; nil if PodCIDRsErr is set.
	PodCIDRs    []netip.Prefix
	PodCIDRsErr error
	// Keepalive is our own AnnotationKeepalive; nil if unset or if
	// KeepaliveErr is set.
	Keepalive    *time.Duration
	KeepaliveErr error
	// Location is LocationOf our Node.
	Location string
	// Peer is our Node as the other agents parse it (ParseNode); nil
	// while it does not parse (e.g. before our key is published).
	// Whatever every node must judge alike (Peers' overlaps, relay
	// candidates) counts our Node only through it.
	Peer *Node
}

// ParseNodes parses every Node of raws once: the first entry named self as
// the own entry (later ones of that name are ignored), the others with
// ParseNode.
func ParseNodes(raws []RawNode, self string) NodeList {
	l := NodeList{SelfName: self, Nodes: make([]Node, 0, len(raws))}
	for _, raw := range raws {
		if raw.Name == self {
			if l.Own == nil {
				l.Own = parseOwn(raw)
			}
			continue
		}
		n, err := ParseNode(raw)
		if err != nil {
			l.Invalid = append(l.Invalid, exclusion(raw.Name, err))
			continue
		}
		l.Nodes = append(l.Nodes, n)
	}
	return l
}

func parseOwn(raw RawNode) *OwnEntry {
	if parseHook != nil {
		parseHook(raw.Name)
	}
	o := &OwnEntry{Raw: raw, Location: LocationOf(raw)}
	if n, err := parseNode(raw); err == nil {
		o.Peer = &n
	}
	o.PodCIDRs, o.PodCIDRsErr = ParsePodCIDRs(raw.PodCIDRs)
	if ka, ok := raw.Annotations[AnnotationKeepalive]; ok {
		d, err := ParseKeepalive(ka)
		if err != nil {
			o.KeepaliveErr = err
		} else {
			o.Keepalive = &d
		}
	}
	return o
}

// Self returns this node as Compute needs it, with its current public key
// (which the list cannot know: key rotation changes it before publishing).
func (l NodeList) Self(pub wgtypes.Key) Self {
	s := Self{Name: l.SelfName, PublicKey: pub}
	if l.Own != nil {
		s.PodCIDRs, s.Keepalive, s.Location = l.Own.PodCIDRs, l.Own.Keepalive, l.Own.Location
	}
	return s
}
