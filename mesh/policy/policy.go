// Package policy compiles Kubernetes NetworkPolicies into the allow rules
// this node must enforce for its own pods. It is pure: it has its own
// vocabulary (Pod, Namespace, Policy, Selector) filled in by an adapter
// (mesh/policy/kube translates the networking.k8s.io/v1 objects), and its
// output, a Ruleset, is turned into nftables by another (mesh/policy/nft).
//
// Semantics follow networking.k8s.io/v1:
//   - a pod is isolated for ingress (egress) when at least one policy in its
//     namespace selects it and lists Ingress (Egress) among its policy types;
//     a pod no policy isolates keeps default allow in that direction;
//   - an isolated pod accepts (sends) exactly the union of what the rules of
//     the policies selecting it allow; replies to allowed connections are
//     always allowed (the dataplane accepts conntrack-established traffic);
//   - a policy the engine cannot express still isolates the pods it selects
//     but allows nothing (it fails closed, never open), and is reported.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Sentinel errors, wrapped by validation.
var (
	// ErrInvalid marks a policy (or a part of one) the engine cannot
	// express.
	ErrInvalid = errors.New("cannot be enforced")
)

// Protocol is an IP protocol number as it appears in the packet.
type Protocol uint8

// The protocols NetworkPolicy ports may name.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProtocol accepts the Kubernetes spelling (TCP, UDP, SCTP); empty
// means TCP, the API's default.
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: %w (want TCP, UDP or SCTP)", s, ErrInvalid)
}

// PodKey names a pod ("namespace/name").
type PodKey struct{ Namespace, Name string }

func (k PodKey) String() string { return k.Namespace + "/" + k.Name }

func (k PodKey) compare(o PodKey) int {
	return cmp.Or(strings.Compare(k.Namespace, o.Namespace), strings.Compare(k.Name, o.Name))
}

// ContainerPort is a port a pod's container declares; named ports in
// policies resolve against these.
type ContainerPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Pod is a pod as policies see it. Adapters leave out pods that have
// finished (their IPs may already belong to someone else).
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// Node is spec.nodeName; only pods of this node are enforced here.
	Node string
	// IPs are status.podIPs. A pod without IPs is neither a target nor a
	// peer yet.
	IPs   []netip.Addr
	Ports []ContainerPort
	// HostNetwork pods use the node's addresses: policies neither select
	// nor match them.
	HostNetwork bool
}

// Key returns the pod's key.
func (p Pod) Key() PodKey { return PodKey{p.Namespace, p.Name} }

// Namespace is a namespace's name and labels (for namespaceSelector).
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Policy is one NetworkPolicy.
type Policy struct {
	Namespace, Name string
	// PodSelector selects the pods (in Namespace) the policy applies to;
	// the empty selector selects all of them.
	PodSelector Selector
	// Ingress and Egress are spec.policyTypes (after the API's
	// defaulting: Ingress always, Egress when there are egress rules).
	Ingress, Egress bool
	IngressRules    []Rule
	EgressRules     []Rule
	// Err, when set, says why the policy cannot be enforced as written
	// (found by the adapter or by Validate). Such a policy isolates the
	// pods it selects, in the directions it names, and allows nothing.
	Err error
}

// Key returns "namespace/name".
func (p Policy) Key() string { return p.Namespace + "/" + p.Name }

// Rule is one ingress or egress rule: traffic to or from any of Peers on any
// of Ports. Empty Peers means every address; empty Ports means every
// protocol and port.
type Rule struct {
	Peers []Peer
	Ports []Port
}

// Peer is one NetworkPolicyPeer: pods chosen by PodSelector and/or
// NamespaceSelector, or an IP block. A nil selector is "not given".
type Peer struct {
	PodSelector       *Selector
	NamespaceSelector *Selector
	IPBlock           *IPBlock
}

// IPBlock is a CIDR minus exceptions.
type IPBlock struct {
	CIDR   netip.Prefix
	Except []netip.Prefix
}

// Port is one NetworkPolicyPort. Port 0 and Name "" mean every port of
// Protocol; Name is a named port resolved against pods' container ports;
// EndPort > 0 makes Port..EndPort a range.
type Port struct {
	Protocol Protocol
	Port     uint16
	Name     string
	EndPort  uint16
}

// Validate reports the first reason the engine cannot express p, wrapped
// around ErrInvalid. Adapters call it after translating; Compile treats a
// policy that fails it like one with Err set.
func (p Policy) Validate() error {
	if p.Err != nil {
		return p.Err
	}
	if err := p.PodSelector.Validate(); err != nil {
		return fmt.Errorf("podSelector: %w", err)
	}
	for dir, rules := range map[string][]Rule{"ingress": p.IngressRules, "egress": p.EgressRules} {
		for i, r := range rules {
			if err := r.validate(); err != nil {
				return fmt.Errorf("%s[%d]: %w", dir, i, err)
			}
		}
	}
	return nil
}

func (r Rule) validate() error {
	for i, peer := range r.Peers {
		if err := peer.validate(); err != nil {
			return fmt.Errorf("peer %d: %w", i, err)
		}
	}
	for i, port := range r.Ports {
		if err := port.validate(); err != nil {
			return fmt.Errorf("port %d: %w", i, err)
		}
	}
	return nil
}

func (p Peer) validate() error {
	n := 0
	for _, s := range []*Selector{p.PodSelector, p.NamespaceSelector} {
		if s != nil {
			n++
			if err := s.Validate(); err != nil {
				return err
			}
		}
	}
	if p.IPBlock != nil {
		if n > 0 {
			return fmt.Errorf("ipBlock together with a selector: %w", ErrInvalid)
		}
		return p.IPBlock.validate()
	}
	if n == 0 {
		return fmt.Errorf("empty peer: %w", ErrInvalid)
	}
	return nil
}

func (b IPBlock) validate() error {
	if !b.CIDR.IsValid() {
		return fmt.Errorf("ipBlock cidr missing: %w", ErrInvalid)
	}
	if b.CIDR.Addr().Is4In6() {
		return fmt.Errorf("ipBlock cidr %s is IPv4-mapped IPv6: %w", b.CIDR, ErrInvalid)
	}
	for _, e := range b.Except {
		if !e.IsValid() || e.Addr().Is4() != b.CIDR.Addr().Is4() || e.Addr().Is4In6() {
			return fmt.Errorf("ipBlock except %s does not fit cidr %s: %w", e, b.CIDR, ErrInvalid)
		}
		if e.Bits() <= b.CIDR.Bits() || !b.CIDR.Contains(e.Addr()) {
			return fmt.Errorf("ipBlock except %s is not a strict subset of %s: %w", e, b.CIDR, ErrInvalid)
		}
	}
	return nil
}

func (p Port) validate() error {
	switch p.Protocol {
	case TCP, UDP, SCTP:
	default:
		return fmt.Errorf("protocol %s: %w", p.Protocol, ErrInvalid)
	}
	switch {
	case p.Name != "" && (p.Port != 0 || p.EndPort != 0):
		return fmt.Errorf("named port %q with a number: %w", p.Name, ErrInvalid)
	case p.Name == "" && p.Port == 0 && p.EndPort != 0:
		return fmt.Errorf("endPort without port: %w", ErrInvalid)
	case p.EndPort != 0 && p.EndPort < p.Port:
		return fmt.Errorf("endPort %d below port %d: %w", p.EndPort, p.Port, ErrInvalid)
	}
	return nil
}
