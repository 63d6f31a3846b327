package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// ApplyFirewall queues every change in one nftables netlink batch, which the
// kernel commits atomically: our table "inet <Table>" is replaced whole (add,
// delete, re-create: so it works whether or not it existed), and our accept
// rules at the head of iptables' FORWARD chains are replaced. Nothing is sent
// when the ruleset already matches, so a resync does not reset counters.
//
// Why iptables' FORWARD chain: a packet is dropped if any base chain on the
// forward hook drops it, so our own accept cannot beat Debian's
// `iptables -P FORWARD DROP`. With iptables-nft that policy lives in the
// nftables chain "ip filter FORWARD", which we edit with the same netlink
// batch instead of shelling out to an iptables binary (go-iptables would
// need one matching the host's in the container). The rules use only
// interface matches, a counter and a comment, all of which iptables-nft
// decodes, so `iptables -S` shows them as ordinary rules. Hosts on the
// legacy (x_tables) iptables backend are not handled here.
func (s *linuxSystem) ApplyFirewall(fw Firewall) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	want := rulesFor(fw)
	pending := false

	same, err := ownTableMatches(c, fw.Table, mainChains, want)
	if err != nil {
		return err
	}
	if !same {
		queueOwnTable(c, fw.Table, mainChains, want)
		pending = true
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		queued, err := queueCompat(c, fam, want[ChainCompatForward])
		if err != nil {
			return err
		}
		pending = pending || queued
	}
	if !pending {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables batch: %w", err)
	}
	return nil
}

// ApplyGuard replaces the guard table "inet <Table>" as a whole, in one
// atomic batch, unless it already holds exactly the wanted rules: a
// converged guard is never touched, so it is never missing for an instant.
func (s *linuxSystem) ApplyGuard(g Guard) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	want := map[string][]Rule{ChainGuard: guardRules(g)}
	same, err := ownTableMatches(c, g.Table, guardChains, want)
	if err != nil || same {
		return err
	}
	queueOwnTable(c, g.Table, guardChains, want)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables batch: %w", err)
	}
	return nil
}

// RemoveFirewall deletes our tables and our rules in iptables' FORWARD
// chains, in one batch. Missing ones are fine.
func (s *linuxSystem) RemoveFirewall(tables ...string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	existing, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	pending := false
	for _, t := range existing {
		if slices.Contains(tables, t.Name) {
			c.DelTable(t)
			pending = true
		}
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		queued, err := queueCompat(c, fam, nil)
		if err != nil {
			return err
		}
		pending = pending || queued
	}
	if !pending {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables batch: %w", err)
	}
	return nil
}

// chainSpec is one base chain of a table we own.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
}

// mainChains are our main table's base chains, in order.
var mainChains = []chainSpec{
	{ChainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
	{ChainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
}

// guardChains is the guard table's chain.
var guardChains = []chainSpec{
	{ChainGuard, nftables.ChainTypeFilter, nftables.ChainHookPostrouting, nftables.ChainPriorityRef(GuardPriority)},
}

// ownTableMatches compares the table's chains and rule comments (which
// fingerprint every rule) with want.
func ownTableMatches(c *nftables.Conn, table string, specs []chainSpec, want map[string][]Rule) (bool, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list nftables chains: %w", err)
	}
	have := map[string][]string{}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return false, fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		have[ch.Name] = []string{}
		for _, r := range rules {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			have[ch.Name] = append(have[ch.Name], cm)
		}
	}
	if len(have) != len(specs) {
		return false, nil
	}
	for _, oc := range specs {
		got, ok := have[oc.name]
		if !ok || !slices.Equal(got, comments(want[oc.name])) {
			return false, nil
		}
	}
	return true, nil
}

func comments(rs []Rule) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Comment())
	}
	return out
}

func queueOwnTable(c *nftables.Conn, name string, specs []chainSpec, want map[string][]Rule) {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	for _, oc := range specs {
		ch := c.AddChain(&nftables.Chain{
			Name: oc.name, Table: t, Type: oc.typ, Hooknum: oc.hook, Priority: oc.priority, Policy: &accept,
		})
		for _, r := range want[oc.name] {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprsFor(r, true), UserData: comment(r)})
		}
	}
}

// queueCompat makes our rules the first rules of "<fam> filter FORWARD" if
// that chain exists. It reports whether it queued anything.
func queueCompat(c *nftables.Conn, fam nftables.TableFamily, want []Rule) (bool, error) {
	t := &nftables.Table{Name: "filter", Family: fam}
	ch, err := c.ListChain(t, ChainCompatForward)
	if err != nil {
		// google/nftables v0.3.0 flattens the netlink error into a
		// string (no %w), hence the text match beside errors.Is.
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file or directory") {
			return false, nil // no iptables-nft filter table: nothing can drop
		}
		return false, fmt.Errorf("look up %s filter FORWARD: %w", familyName(fam), err)
	}
	ch.Table = t
	rules, err := c.GetRules(t, ch)
	if err != nil {
		return false, fmt.Errorf("list %s filter FORWARD: %w", familyName(fam), err)
	}
	var ours []*nftables.Rule
	var head []string
	for i, r := range rules {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if strings.HasPrefix(cm, CommentPrefix) {
			ours = append(ours, r)
		}
		if i < len(want) {
			head = append(head, cm)
		}
	}
	if len(ours) == len(want) && slices.Equal(head, comments(want)) {
		return false, nil
	}
	for _, r := range ours {
		r.Table, r.Chain = t, ch
		if err := c.DelRule(r); err != nil {
			return false, err
		}
	}
	// Insert puts a rule first; going backwards keeps want's order.
	for i := len(want) - 1; i >= 0; i-- {
		c.InsertRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprsFor(want[i], false), UserData: comment(want[i])})
	}
	return true, nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

func comment(r Rule) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, r.Comment())
}

// exprsFor encodes r. inet selects the inet family, where address matches
// need an explicit protocol check first.
func exprsFor(r Rule, inet bool) []expr.Any {
	var e []expr.Any
	fam := r.Src
	if !fam.IsValid() {
		fam = r.Dst
	}
	if fam.IsValid() && inet {
		proto := byte(unix.NFPROTO_IPV6)
		if fam.Addr().Is4() {
			proto = unix.NFPROTO_IPV4
		}
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		)
	}
	if r.IIF != "" {
		e = append(e, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, r.IIF)...)
	}
	if r.OIF != "" {
		e = append(e, ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, r.OIF)...)
	}
	for _, n := range r.NotOIF {
		e = append(e, ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, n)...)
	}
	if r.TCPSyn {
		// As nft encodes `meta l4proto tcp tcp flags & (syn|rst) == syn`.
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpSYN | tcpRST}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpSYN}},
		)
	}
	if r.Src.IsValid() {
		e = append(e, prefixMatch(r.Src, true, expr.CmpOpEq)...)
		for _, p := range r.NotDst {
			if p.Addr().Is4() == r.Src.Addr().Is4() {
				e = append(e, prefixMatch(p, false, expr.CmpOpNeq)...)
			}
		}
	}
	if r.Dst.IsValid() {
		e = append(e, prefixMatch(r.Dst, false, expr.CmpOpEq)...)
	}
	if r.Established {
		if inet {
			e = append(e,
				&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
					Xor:  make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			)
		} else {
			// In iptables' own chains use the x_tables conntrack match,
			// exactly as `iptables -m conntrack --ctstate` writes it:
			// iptables-nft 1.8 declares a whole table incompatible (and
			// stops listing it, breaking kube-proxy and friends) if it
			// meets a native ct expression.
			e = append(e, &expr.Match{Name: "conntrack", Rev: 3, Info: &xt.ConntrackMtinfo3{
				ConntrackMtinfo2: xt.ConntrackMtinfo2{
					ConntrackMtinfoBase: xt.ConntrackMtinfoBase{MatchFlags: uint16(xt.ConntrackState)},
					StateMask:           xtStateEstablished | xtStateRelated,
				},
			}})
		}
	}
	e = append(e, &expr.Counter{})
	switch r.Verdict {
	case VerdictAccept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case VerdictDrop:
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	case VerdictMasquerade:
		e = append(e, &expr.Masq{})
	case VerdictClampMSS:
		// `tcp option maxseg size set rt mtu`: the route's MSS (its MTU
		// minus the IP and TCP headers) in host order, turned to network
		// order, written into the MSS option if it is lower.
		e = append(e,
			&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
			&expr.Exthdr{SourceRegister: 1, Type: tcpOptMaxSeg, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
		)
	}
	return e
}

// TCP header bits and option kind used by the MSS clamp.
const (
	tcpSYN       = 0x02
	tcpRST       = 0x04
	tcpOptMaxSeg = 2
)

// x_tables conntrack state bits: XT_CONNTRACK_STATE_BIT(ctinfo) is
// 1 << (ctinfo + 1), with IP_CT_ESTABLISHED = 0 and IP_CT_RELATED = 1.
const (
	xtStateEstablished = 1 << 1
	xtStateRelated     = 1 << 2
)

// ifname matches an interface name the way nft(8) encodes it: the name,
// NUL-padded to IFNAMSIZ.
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// prefixMatch compares the source (src) or destination address with p.
func prefixMatch(p netip.Prefix, src bool, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	addr := p.Addr().AsSlice()
	var off uint32
	switch {
	case p.Addr().Is4() && src:
		off = 12
	case p.Addr().Is4():
		off = 16
	case src:
		off = 8
	default:
		off = 24
	}
	n := uint32(len(addr))
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: addr},
	}
}
