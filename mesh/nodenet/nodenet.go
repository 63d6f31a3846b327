// Package nodenet holds the names and rules every wgmesh component on a node
// must agree on: the interface and bridge names, the nftables tables, where
// the bridge's gateway sits in a pod CIDR, and how a net.IPNet becomes a
// netip.Prefix. They used to be repeated (the bridge name in three
// packages, the gateway rule in two) with tests checking the copies matched;
// here they have one definition. It imports only the standard library so
// that the CNI plugin binary, the pure core and every adapter can use it
// without pulling in anything else.
package nodenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Names on the node. The agent makes all of them; the CNI plugin only
// looks them up.
const (
	// Interface is the WireGuard interface's default name.
	Interface = "wgmesh0"
	// Bridge is the pod bridge. The agent's data plane owns it (creates it,
	// gives it its gateways, brings it up); the CNI plugin refuses ADD
	// until it is ready.
	Bridge = "wgmesh-br0"
	// MainTable is the agent's nftables table (family inet): forwarding
	// and masquerade rules.
	MainTable = "wgmesh"
	// GuardTable is the agent's fail-closed guard table (family inet). Its
	// presence tells the CNI plugin the agent has run since boot.
	GuardTable = "wgmesh-guard"
	// PolicyTable is the NetworkPolicy enforcer's table (family inet, and
	// family bridge for the fallback without br_netfilter).
	PolicyTable = "wgmesh-policy"
)

// ErrNoGateway: the pod CIDR has no room for a gateway address besides the
// network (and IPv4 broadcast) address.
var ErrNoGateway = errors.New("prefix too small for a gateway address")

// Gateway is the bridge's address in a node's pod CIDR: the first address
// after the network address, with the CIDR's length (10.244.1.0/24 →
// 10.244.1.1/24). The agent puts it on the bridge; the CNI plugin hands it
// to pods as their default gateway and never allocates it.
func Gateway(podCIDR netip.Prefix) (netip.Prefix, error) {
	p := podCIDR.Masked()
	if !p.IsValid() || p.Bits() >= p.Addr().BitLen()-1 {
		return netip.Prefix{}, fmt.Errorf("%s: %w", podCIDR, ErrNoGateway)
	}
	return netip.PrefixFrom(p.Addr().Next(), p.Bits()), nil
}

// PrefixFromIPNet converts n, keeping its host bits (10.244.1.1/24 stays
// that; call Masked for the network). IPv4 addresses come back as 4-byte
// addresses whichever form n uses, including an IPv4 address with a 16-byte
// mask. ok is false for what has no prefix form: an invalid IP, a
// non-canonical mask, or a mask that does not fit the address family.
func PrefixFromIPNet(n net.IPNet) (p netip.Prefix, ok bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false // non-canonical (or empty) mask
	}
	if a.Is4In6() && bits == 128 {
		ones, bits = ones-96, 32
	}
	a = a.Unmap()
	if bits != a.BitLen() || ones < 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
