package show

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/wgmesh/wgmesh/mesh"
)

// PeerConfigInput is what `wgmeshctl peer-config NAME` knows: the Peer, the
// cluster's Nodes and the Service ranges.
type PeerConfigInput struct {
	Peer  mesh.RawExternalPeer
	Nodes []mesh.RawNode
	// Peers are all the cluster's Peer objects: the named one must be
	// valid among them as every agent judges it.
	Peers []mesh.RawExternalPeer
	// ServiceCIDRs are routed through the gateway node.
	ServiceCIDRs []netip.Prefix
	// Gateway names the node that carries the Service ranges; "" picks
	// the oldest node of the mesh (ties: the smaller name), which stays
	// the same as nodes come and go until that node leaves.
	Gateway string
}

// PeerConfig writes the external peer's side of the mesh as a wg-quick
// config: an [Interface] with the Peer's host addresses (its /32 and /128
// allowed IPs) and a placeholder for its private key, and a [Peer] per node
// of the mesh, reached at the node's public endpoint, whose allowed IPs are
// the node's pod CIDRs; the gateway's also carry the Service ranges (the
// gateway's kube-proxy then sends Service traffic on to the backends). It
// fails when the Peer is not one every agent accepts.
func PeerConfig(w io.Writer, in PeerConfigInput) error {
	list := mesh.ParseNodes(in.Nodes, "")
	valid, refused := mesh.ParseExternalPeers(in.Peers, list)
	for _, e := range refused {
		if e.Node == in.Peer.Name {
			return fmt.Errorf("peer %q is refused by the agents (%s): %v", e.Node, e.Reason, e.Err)
		}
	}
	i := slices.IndexFunc(valid, func(p mesh.ExternalPeer) bool { return p.Name == in.Peer.Name })
	if i < 0 {
		return fmt.Errorf("peer %q is not among the cluster's Peers", in.Peer.Name)
	}
	peer := valid[i]

	// The nodes every agent puts into the mesh: Compute from no node's
	// point of view (no self) settles key and CIDR conflicts as they do.
	d := mesh.Compute(mesh.Input{Parsed: &list})
	if len(d.Peers) == 0 {
		return fmt.Errorf("no node is in the mesh")
	}
	byName := map[string]mesh.Node{}
	for _, n := range list.Nodes {
		byName[n.Name] = n
	}
	gw := in.Gateway
	if gw == "" && len(in.ServiceCIDRs) > 0 {
		oldest := slices.MinFunc(d.Peers, func(a, b mesh.Peer) int {
			if c := byName[a.Node].Created.Compare(byName[b.Node].Created); c != 0 {
				return c
			}
			return cmp.Compare(a.Node, b.Node)
		})
		gw = oldest.Node
	}
	if gw != "" && !slices.ContainsFunc(d.Peers, func(p mesh.Peer) bool { return p.Node == gw }) {
		return fmt.Errorf("gateway %q is not a node of the mesh", gw)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# wgmesh external peer %q (wgmeshctl peer-config).\n", peer.Name)
	fmt.Fprintf(&b, "# Use with wg-quick, or strip Address for wg setconf and add the address and routes yourself.\n")
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "# The private key whose public key is the Peer's spec.publicKey (%s).\n", peer.PublicKey)
	b.WriteString("PrivateKey = <private key>\n")
	var hosts []string
	for _, a := range peer.AllowedIPs {
		if a.IsSingleIP() {
			hosts = append(hosts, a.String())
		}
	}
	if len(hosts) > 0 {
		fmt.Fprintf(&b, "Address = %s\n", strings.Join(hosts, ", "))
	} else {
		fmt.Fprintf(&b, "# Address: an address of yours within %s (the Peer's allowed IPs)\n", joinPrefixes(peer.AllowedIPs))
	}
	for _, p := range d.Peers {
		n := byName[p.Node]
		allowed := slices.Clone(p.AllowedIPs)
		b.WriteString("\n[Peer]\n")
		if p.Node == gw {
			fmt.Fprintf(&b, "# node %s, the gateway for the Service range\n", p.Node)
			allowed = append(allowed, in.ServiceCIDRs...)
		} else {
			fmt.Fprintf(&b, "# node %s\n", p.Node)
		}
		fmt.Fprintf(&b, "PublicKey = %s\n", p.PublicKey)
		// The public endpoint (an override first): an external peer is
		// in no location.
		fmt.Fprintf(&b, "Endpoint = %s\n", n.Endpoint)
		fmt.Fprintf(&b, "AllowedIPs = %s\n", joinPrefixes(allowed))
		if peer.Keepalive != nil && *peer.Keepalive > 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", int(peer.Keepalive.Seconds()))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
