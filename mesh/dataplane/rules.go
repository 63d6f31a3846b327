package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

// Firewall is the packet filtering and NAT a node needs, in our terms. The
// Linux System turns it into nftables rules; rulesFor is the single place
// that decides which rules exist in our main table (guardRules those of the
// fail-closed guard, see Guard).
type Firewall struct {
	// Table is our nftables table (family inet), replaced as a whole.
	Table         string
	Bridge        string
	WGInterface   string
	LocalPodCIDRs []netip.Prefix
	ClusterCIDRs  []netip.Prefix
}

// Chains a rule can live in.
const (
	// ChainForward and ChainPostrouting are base chains of our own table.
	ChainForward     = "forward"
	ChainPostrouting = "postrouting"
	// ChainCompatForward is iptables' "filter FORWARD" chain (tables ip
	// filter and ip6 filter, as made by iptables-nft), if the host has it.
	ChainCompatForward = "FORWARD"
	// ChainGuard is the guard table's only chain: a filter chain on the
	// postrouting hook running after source NAT (see Guard).
	ChainGuard = "postrouting"
)

// Verdicts.
const (
	VerdictAccept     = "accept"
	VerdictMasquerade = "masquerade"
	VerdictDrop       = "drop"
	// VerdictClampMSS lowers the MSS option of a TCP SYN to what the
	// route's MTU allows (never raises it) and lets the packet continue.
	VerdictClampMSS = "clamp-mss"
)

// CommentPrefix starts the comment of every rule we create; rules in
// chains we do not own are recognised by it.
const CommentPrefix = "wgmesh:"

// Rule is one firewall rule, independent of nftables' encoding. Empty fields
// match anything; all set fields must match.
type Rule struct {
	Chain string
	// IIF / OIF: input / output interface name.
	IIF, OIF string
	// NotOIF: the output interface is none of these.
	NotOIF []string
	// Src: source address within the prefix (also selects the family).
	Src netip.Prefix
	// Dst: destination address within the prefix (also selects the
	// family; if Src is set too, both must be of one family).
	Dst netip.Prefix
	// NotDst: destination address within none of these prefixes (only
	// those of Src's family apply; needs Src).
	NotDst []netip.Prefix
	// TCPSyn: a TCP segment with SYN set and RST clear (SYN and SYN-ACK).
	TCPSyn bool
	// Established: the packet belongs to a connection conntrack has seen
	// both ways, or is related to one (ct state established,related).
	Established bool
	Verdict     string
	// Note says why the rule exists; Comment adds a fingerprint of all
	// fields so that comparing comments compares rules.
	Note string
}

// Comment is the rule's nftables comment: our prefix, the note, and a short
// hash of every field. An unchanged comment therefore means an unchanged
// rule, which lets Apply leave a converged ruleset (and its counters) alone.
func (r Rule) Comment() string {
	fields := fmt.Sprintf("%s|%s|%s|%v|%s|%v|%v|%s",
		r.Chain, r.IIF, r.OIF, r.NotOIF, r.Src, r.NotDst, r.Established, r.Verdict)
	// Fields added later join the fingerprint only when set, so rules
	// that do not use them keep their comments across upgrades.
	if r.Dst.IsValid() {
		fields += "|dst=" + r.Dst.String()
	}
	if r.TCPSyn {
		fields += "|tcpsyn"
	}
	sum := sha256.Sum256([]byte(fields))
	c := fmt.Sprintf("%s %s #%s", CommentPrefix, r.Note, hex.EncodeToString(sum[:4]))
	// nft limits comments to 128 bytes; the hash at the end must survive.
	if len(c) > 120 {
		note := r.Note[:max(0, len(r.Note)-(len(c)-120))]
		c = fmt.Sprintf("%s %s #%s", CommentPrefix, strings.TrimSpace(note), hex.EncodeToString(sum[:4]))
	}
	return c
}

// rulesFor lists every rule of fw, in order, per chain. Chains of our table
// are present even when empty.
func rulesFor(fw Firewall) map[string][]Rule {
	br, wg := fw.Bridge, fw.WGInterface
	// Accepting here is what matters on hosts whose iptables FORWARD policy
	// is DROP: in nftables every base chain on the hook must accept, so we
	// insert these into iptables' FORWARD chain as well as keeping them in
	// our own forward chain (where later fail-closed drops will sit next to
	// them, and where their counters show pod traffic).
	//
	// Pods may open connections anywhere (leaving the cluster they are
	// masqueraded below); from outside the mesh only replies come back in,
	// so a host that drops forwarded traffic does not become an open
	// router into its pods. The separate rules per path keep separate
	// counters.
	forward := []Rule{
		{IIF: br, OIF: wg, Verdict: VerdictAccept, Note: "pods to the mesh"},
		{IIF: wg, OIF: br, Verdict: VerdictAccept, Note: "mesh to pods"},
		// A relay node forwards pod traffic between two of its peers
		// that cannot reach each other (mesh.AnnotationRelay); it is
		// WireGuard-encrypted on both legs.
		{IIF: wg, OIF: wg, Verdict: VerdictAccept, Note: "relayed between peers"},
		{IIF: br, OIF: br, Verdict: VerdictAccept, Note: "pod to pod on this node"},
		{IIF: br, Verdict: VerdictAccept, Note: "pods to outside the cluster"},
		{OIF: br, Established: true, Verdict: VerdictAccept, Note: "replies to pods"},
	}
	out := map[string][]Rule{ChainForward: nil, ChainPostrouting: nil, ChainCompatForward: nil}
	// MSS clamping first (it does not end the chain): a TCP handshake
	// through the mesh agrees on segments that fit the smaller WireGuard
	// MTU of the two nodes, whatever MTU the endpoints' own interfaces
	// have (a pod made before an MTU change, a client outside the cluster
	// reaching a pod through a node port). Into the mesh the route MTU is
	// our WireGuard MTU; out of the mesh it is that of the bridge, which
	// carries the same MTU, so the peer's SYN learns our limit. The
	// kernel only ever lowers the option.
	for _, r := range []Rule{
		{OIF: wg, TCPSyn: true, Verdict: VerdictClampMSS, Note: "clamp tcp mss to the route mtu into the mesh"},
		{IIF: wg, TCPSyn: true, Verdict: VerdictClampMSS, Note: "clamp tcp mss to the route mtu out of the mesh"},
	} {
		r.Chain = ChainForward
		out[ChainForward] = append(out[ChainForward], r)
	}
	for _, r := range forward {
		r.Chain = ChainForward
		out[ChainForward] = append(out[ChainForward], r)
		r.Chain = ChainCompatForward
		out[ChainCompatForward] = append(out[ChainCompatForward], r)
	}
	for _, p := range fw.LocalPodCIDRs {
		p = p.Masked()
		var notDst []netip.Prefix
		for _, c := range fw.ClusterCIDRs {
			if c.Addr().Is4() == p.Addr().Is4() {
				notDst = append(notDst, c.Masked())
			}
		}
		// Our own pod prefix is in the cluster range by definition; list
		// it anyway so a cluster-cidrs setting that misses it still never
		// NATs pod-to-pod traffic.
		if !containsPrefix(notDst, p) {
			notDst = append(notDst, p)
		}
		out[ChainPostrouting] = append(out[ChainPostrouting], Rule{
			Chain: ChainPostrouting,
			// Never NAT what goes back into the bridge or into the
			// mesh: both are pod-to-pod.
			NotOIF:  []string{br, wg},
			Src:     p,
			NotDst:  notDst,
			Verdict: VerdictMasquerade,
			Note:    "masquerade pods of " + p.String() + " leaving the cluster",
		})
	}
	return out
}

// containsPrefix reports whether p lies within one of ps.
func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Guard is wgmesh's fail-closed rule set: nothing whose source or destination
// lies in a cluster pod range leaves the node by any interface other than
// the WireGuard interface, the pod bridge and loopback. It lives in a table
// of its own, independent of the mesh's state, so the agent installs it
// before anything else at start and it stays in the kernel while the agent
// is down or restarting; an agent that crashed, or a node whose route to a
// peer went missing, therefore drops pod traffic instead of sending it in
// the clear by the default route.
//
// The chain hooks postrouting after source NAT, so it sees every packet the
// node sends (forwarded or its own) with its final addresses: pod traffic
// leaving the cluster has been masqueraded to the node's address by then
// and passes, while pod traffic that escaped masquerading is dropped.
// WireGuard's own UDP is sent from and to node addresses and never matches.
type Guard struct {
	// Table is the guard's nftables table (family inet).
	Table        string
	WGInterface  string
	Bridge       string
	ClusterCIDRs []netip.Prefix
}

// GuardPriority is the guard chain's priority on the postrouting hook:
// after NAT's source translation (100).
const GuardPriority = 300

// loopback is always an allowed way out: packets to the node's own
// addresses (such as its bridge gateway) pass postrouting on "lo".
const loopback = "lo"

// guardRules lists the guard chain's rules: per cluster range, a drop for
// traffic to it and one for traffic from it, by any other interface.
func guardRules(g Guard) []Rule {
	allowed := []string{g.WGInterface, g.Bridge, loopback}
	var out []Rule
	for _, c := range g.ClusterCIDRs {
		c = c.Masked()
		out = append(out,
			Rule{Chain: ChainGuard, NotOIF: allowed, Dst: c, Verdict: VerdictDrop,
				Note: "fail closed: " + c.String() + " only through the mesh"},
			Rule{Chain: ChainGuard, NotOIF: allowed, Src: c, Verdict: VerdictDrop,
				Note: "fail closed: " + c.String() + " sources only through the mesh"},
		)
	}
	return out
}
