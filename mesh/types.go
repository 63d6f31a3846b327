// Package mesh is the pure core of wgmesh: it turns a list of nodes into the
// WireGuard peers and routes this node should have, and diffs that against
// what the device has. It performs no I/O of its own; the adapters beside it
// (mesh/kube, mesh/wgdev, mesh/dataplane) implement the small interfaces
// declared here.
package mesh

import (
	"context"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Annotation keys on Node objects. The agent owns the first two on its own
// Node; operators may set the others.
const (
	AnnotationPrefix           = "wgmesh.io/"
	AnnotationPublicKey        = AnnotationPrefix + "public-key"
	AnnotationEndpoint         = AnnotationPrefix + "endpoint"
	AnnotationEndpointOverride = AnnotationPrefix + "endpoint-override"
	AnnotationKeepalive        = AnnotationPrefix + "persistent-keepalive"
	// AnnotationRotateKey asks the node's agent for a new key: set it to a
	// value it never had (a nonce; wgmeshctl rotate-key does). The agent
	// answers by publishing AnnotationKeyRotated with the same value in the
	// patch that carries its new public key, so a request is acted on once
	// and its completion is visible to whoever made it.
	AnnotationRotateKey  = AnnotationPrefix + "rotate-key"
	AnnotationKeyRotated = AnnotationPrefix + "key-rotated"
)

// RawNode is a Node object as the API shows it, reduced to the fields the
// mesh reads. Adapters fill it without validating anything: validation is
// the core's job so that every bad input is handled in one place.
type RawNode struct {
	Name        string
	Annotations map[string]string
	// Labels are read for the location (LocationOf) only.
	Labels map[string]string
	// PodCIDRs is spec.podCIDRs (falling back to spec.podCIDR).
	PodCIDRs []string
	// InternalIPs are the node's status addresses of type InternalIP, in order.
	InternalIPs []string
	// UID distinguishes a re-created Node of the same name.
	UID string
	// ResourceVersion is metadata.resourceVersion ("" if the source has
	// none). The reconciler uses it to tell "our patch has not reached the
	// cache yet" from "someone changed our annotations".
	ResourceVersion string
	// Created is metadata.creationTimestamp. Conflicts (duplicate keys,
	// overlapping podCIDRs) are settled in favour of the older node.
	Created time.Time
}

// Endpoint is where a peer is reached: an IP literal or a DNS name, and a
// UDP port. Names are resolved by a Resolver at reconcile time.
type Endpoint struct {
	Host string
	Port uint16
}

// Node is a validated member of the mesh.
type Node struct {
	Name      string
	PublicKey wgtypes.Key
	Endpoint  Endpoint
	PodCIDRs  []netip.Prefix
	// Keepalive is the node's requested persistent keepalive; nil means
	// "use the agent's default".
	Keepalive *time.Duration
	// Created is RawNode.Created: conflicts are settled in favour of the
	// older node.
	Created time.Time
	// Location is LocationOf the node ("" for none); PrivateEndpoint is
	// its AnnotationPrivateEndpoint (zero if unset), used instead of
	// Endpoint by nodes of the same location (see towards).
	Location        string
	PrivateEndpoint Endpoint
	// Relay is AnnotationRelay=true: the node offers to relay between
	// nodes that cannot reach each other. NoRelay is
	// AnnotationRelay=false: never choose it automatically.
	Relay, NoRelay bool
}

// Peer is one WireGuard peer this node should have.
type Peer struct {
	Node       string
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort // invalid (zero) when the endpoint could not be resolved
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
	// Via names the relay node this peer's pod traffic goes through (its
	// pod CIDRs are on the relay's peer); "" when direct.
	Via string
}

// Exclusion records why a node is left out of the mesh.
type Exclusion struct {
	Node   string
	Reason Reason
	Err    error
}

// Reason is a short, stable, metric-friendly word for an exclusion.
type Reason string

const (
	ReasonNoPublicKey      Reason = "no-public-key"
	ReasonBadPublicKey     Reason = "bad-public-key"
	ReasonNoEndpoint       Reason = "no-endpoint"
	ReasonBadEndpoint      Reason = "bad-endpoint"
	ReasonNoPodCIDR        Reason = "no-pod-cidr"
	ReasonBadPodCIDR       Reason = "bad-pod-cidr"
	ReasonBadKeepalive     Reason = "bad-keepalive"
	ReasonDuplicateKey     Reason = "duplicate-public-key"
	ReasonOverlappingCIDR  Reason = "overlapping-pod-cidr"
	ReasonUnresolvable     Reason = "unresolvable-endpoint"
	ReasonSameKeyAsSelf    Reason = "same-public-key-as-self"
	ReasonOverlapsSelfCIDR Reason = "overlaps-local-pod-cidr"
)

// Desired is the state this node should converge to.
type Desired struct {
	// Peers, sorted by node name.
	Peers []Peer
	// Routes are the remote pod prefixes routed through the WireGuard
	// interface, sorted.
	Routes []netip.Prefix
	// Excluded nodes, sorted by node name.
	Excluded []Exclusion
	// Degraded nodes are peers (they are in Peers) with a problem worth a
	// warning, such as an endpoint name that did not resolve: the peer is
	// kept without an endpoint so that it can still reach us and a DNS
	// hiccup never tears down a working session. Sorted by node name.
	Degraded []Exclusion
}

// NodeSource is the mesh's view of the cluster's Node objects. Nodes reads a
// local cache (an informer's lister); Changed is a level trigger: a
// capacity-1 channel that receives after any change, so bursts coalesce and
// the reconciler always re-reads the full list. The RawNodes Nodes returns
// may share maps and slices with earlier and later calls' (a source may
// cache its translations): readers must not modify them.
type NodeSource interface {
	Nodes() ([]RawNode, error)
	Changed() <-chan struct{}
	// HasSynced reports whether the cache has completed its first list;
	// peers are garbage-collected only after that.
	HasSynced() bool
	// Publish merges the given annotations into this node's own Node object
	// (a patch, never a full update).
	Publish(ctx context.Context, annotations map[string]string) error
	// Warn records a warning Event on the named Node.
	Warn(node, reason, message string)
}

// Device reads and configures the WireGuard interface. wgctrl's client
// bound to an interface name has this shape.
type Device interface {
	Device() (*wgtypes.Device, error)
	ConfigureDevice(cfg wgtypes.Config) error
}

// Dataplane makes the host's routes, bridge and firewall rules match the
// desired state. Apply must be idempotent: it is called on every reconcile.
type Dataplane interface {
	Apply(ctx context.Context, s DataplaneState) error
}

// DataplaneState is everything outside the WireGuard device that the node
// needs for pods to talk across the mesh.
type DataplaneState struct {
	// LocalPodCIDRs are this node's own pod prefixes (the bridge gateway is
	// the first address of each).
	LocalPodCIDRs []netip.Prefix
	// RemotePodCIDRs are routed through the WireGuard interface.
	RemotePodCIDRs []netip.Prefix
	// MTU of the WireGuard interface; pods use the same.
	MTU int
}

// KeyStore keeps this node's private key. Save replaces the stored key with
// a newly generated one during key rotation: atomically (a crash leaves the
// old or the new key, never neither or a mix), durably, and without keeping
// a copy of the old key anywhere.
type KeyStore interface {
	Save(key wgtypes.Key) error
}

// Resolver turns an endpoint host into addresses. net.DefaultResolver's
// LookupNetIP has this shape.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}
