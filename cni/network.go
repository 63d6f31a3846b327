package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"regexp"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Errors the Network reports about the pod's namespace and interface; the
// plugin maps them to CNI error codes.
var (
	ErrNetNSNotFound = errors.New("network namespace does not exist")
	ErrNotNetNS      = errors.New("not a network namespace")
	ErrOwnNetNS      = errors.New("is the plugin's own network namespace")
	ErrIfaceExists   = errors.New("interface already exists")
	// ErrNoGuard: the agent's fail-closed guard is not installed on this
	// node (yet), so a pod's traffic to other nodes could leave in plaintext.
	ErrNoGuard = errors.New("fail-closed guard is not installed")
	// ErrBridgeNotReady: the bridge is missing, down or lacks a gateway
	// address. The agent's data plane owns the bridge and fixes all three
	// on its next pass; the plugin never creates or changes it.
	ErrBridgeNotReady = errors.New("bridge is not ready")
)

// GuardTable is the nftables table (family inet) in which the agent keeps its
// fail-closed guard: its presence in the node's namespace means the agent has
// run here since boot.
const GuardTable = nodenet.GuardTable

// BridgeSpec is the node side every pod plugs into. The agent's data plane
// (mesh/dataplane) is the bridge's only owner: it creates it, pins its MAC,
// gives it its gateways and brings it up. The plugin only checks it.
type BridgeSpec struct {
	Name string
	// Gateways are the addresses the bridge must carry, e.g. 10.244.1.1/24
	// (nodenet.Gateway of each podCIDR).
	Gateways []netip.Prefix
}

// PodSpec describes one attachment's veth pair.
type PodSpec struct {
	NetNS  string // pod network namespace path (CNI_NETNS)
	IfName string // pod end (CNI_IFNAME)
	// HostVeth is the host end's name, derived from the attachment so DEL,
	// CHECK and GC find it without state.
	HostVeth string
	Bridge   string
	MTU      int
	// Addrs are the pod's addresses with the podCIDR length (10.244.1.5/24).
	Addrs []netip.Prefix
	// Gateways get a default route each, one per address family.
	Gateways []netip.Addr
}

// Network is the Linux plumbing the plugin needs. Methods are idempotent
// where the CNI verb they serve must be, and tolerate what a concurrent
// plugin process or the agent may be doing to the same bridge.
type Network interface {
	// ValidateNetNS checks that path is a network namespace other than the
	// plugin's own (errors wrap ErrNetNSNotFound, ErrNotNetNS, ErrOwnNetNS).
	ValidateNetNS(path string) error
	// GuardReady returns nil if the fail-closed guard table (inet
	// GuardTable) exists in the node's network namespace, an error wrapping
	// ErrNoGuard if it does not, or another error if it cannot tell. After a
	// reboot the conflist is still on disk but the guard and the unreachable
	// routes are gone until the agent starts; attaching a pod then would send
	// its cross-node traffic down the default route in plaintext.
	GuardReady() error
	// BridgeReady returns the bridge if it can serve pods: it exists, is
	// up and carries every gateway. Otherwise the error wraps
	// ErrBridgeNotReady and says which, or is another error if it cannot
	// tell. Nothing is changed.
	BridgeReady(BridgeSpec) (*current.Interface, error)
	// AttachPod creates the veth pair, configures the pod end (MTU,
	// addresses, default routes) and plugs the host end into the bridge with
	// hairpin on. It fails with ErrIfaceExists if the pod already has
	// IfName, and removes whatever it created when it fails.
	AttachPod(PodSpec) (host, pod *current.Interface, err error)
	// DetachPod removes the veth pair. A missing namespace or interface is
	// success.
	DetachPod(PodSpec) error
	// CheckPod verifies that the attachment still looks as AttachPod left it.
	CheckPod(PodSpec) error
	// SweepVeths deletes the host ends of attachments on bridge whose names
	// are not in keep, and returns their names.
	SweepVeths(bridge string, keep map[string]bool) ([]string, error)
}

// HostVethName is the host end's name for an attachment: "veth" and 11 hex
// digits of a hash of (container ID, ifname). Deterministic so that DEL and
// GC need no state to find it; "veth" so NetworkManager leaves it alone.
func HostVethName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return "veth" + hex.EncodeToString(h[:])[:11]
}

var hostVethRe = regexp.MustCompile(`^veth[0-9a-f]{11}$`)

// IsHostVethName reports whether name has HostVethName's form.
func IsHostVethName(name string) bool { return hostVethRe.MatchString(name) }
