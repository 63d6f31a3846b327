package mesh

import (
	"fmt"
	"net/netip"
	"strings"
)

// Locations: nodes that share a network (a cloud VPC, a data centre LAN)
// reach each other over their private addresses, nodes in different
// networks over their public endpoints. Traffic is WireGuard-encrypted
// either way; a location only picks the address a peer is sent to.
const (
	// AnnotationLocation names the node's location. The same key as a
	// label works too; the annotation wins.
	AnnotationLocation = AnnotationPrefix + "location"
	// LabelLocation is AnnotationLocation as a label.
	LabelLocation = AnnotationLocation
	// LabelZone is the well-known zone label, the location of a node that
	// names none of its own.
	LabelZone = "topology.kubernetes.io/zone"
	// AnnotationPrivateEndpoint is where nodes of the same location reach
	// this one ("ip:port", an IP literal: the node's InternalIP). The
	// agent publishes it while its node has a location.
	AnnotationPrivateEndpoint = AnnotationPrefix + "private-endpoint"
)

// ReasonBadPrivateEndpoint excludes a node whose private endpoint does not
// parse: whoever set it meant its location-mates to use it, and silently
// falling back to the public endpoint would hide that.
const ReasonBadPrivateEndpoint Reason = "bad-private-endpoint"

// maxLocation bounds a location name (a label value has at most 63 bytes;
// an annotation could be anything).
const maxLocation = 63

// LocationOf returns the node's location: AnnotationLocation, else the
// LabelLocation label, else the LabelZone label, else "" (none). Values
// are trimmed; one longer than 63 bytes counts as none, so that a
// location can never be an unbounded string in logs and metrics.
func LocationOf(raw RawNode) string {
	for _, v := range []string{raw.Annotations[AnnotationLocation], raw.Labels[LabelLocation], raw.Labels[LabelZone]} {
		if v = strings.TrimSpace(v); v != "" {
			if len(v) > maxLocation {
				return ""
			}
			return v
		}
	}
	return ""
}

// ParsePrivateEndpoint parses "ip:port" (IPv6 in brackets). Unlike the
// public endpoint it must be an IP literal: it is the node's InternalIP,
// and a name would need resolving on every location-mate.
func ParsePrivateEndpoint(s string) (Endpoint, error) {
	ep, err := ParseEndpoint(s)
	if err != nil {
		return Endpoint{}, err
	}
	if _, ok := ep.AddrPort(); !ok {
		return Endpoint{}, fmt.Errorf("%w private endpoint %q: want an IP address, not a name", ErrMalformed, s)
	}
	return ep, nil
}

// parseLocation fills n's location and private endpoint from raw.
func parseLocation(raw RawNode, n *Node) error {
	n.Location = LocationOf(raw)
	text, ok := raw.Annotations[AnnotationPrivateEndpoint]
	if !ok || strings.TrimSpace(text) == "" {
		return nil
	}
	ep, err := ParsePrivateEndpoint(text)
	if err != nil {
		return &NodeError{Node: raw.Name, Reason: ReasonBadPrivateEndpoint,
			Err: fmt.Errorf("annotation %s: %w", AnnotationPrivateEndpoint, err)}
	}
	n.PrivateEndpoint = ep
	return nil
}

// SameLocation reports whether a node in location b is a location-mate of
// one in a: both name a location and it is the same.
func SameLocation(a, b string) bool { return a != "" && a == b }

// towards returns n as self should dial it: with its private endpoint as
// the endpoint when both are in the same location and n has one, else
// unchanged (its public endpoint).
func towards(n Node, self Self) Node {
	if SameLocation(self.Location, n.Location) && n.PrivateEndpoint.Host != "" {
		n.Endpoint = n.PrivateEndpoint
	}
	return n
}

// privateEndpointFor is the private endpoint the agent publishes: the
// first InternalIP that parses, with the listen port.
func privateEndpointFor(internalIPs []string, port int) (Endpoint, bool) {
	for _, s := range internalIPs {
		if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
			return Endpoint{Host: a.Unmap().String(), Port: uint16(port)}, true
		}
	}
	return Endpoint{}, false
}
