package nft

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

// program is a rendered ruleset: the nftables objects of our table(s), in
// the order they must be created, plus a readable listing whose hash
// identifies the program.
type program struct {
	inet table
	// bridge is the fail-closed table for hosts without br_netfilter; nil
	// when bridged traffic reaches the inet table.
	bridge *table
	text   string
	hash   string
}

type table struct {
	family nftables.TableFamily
	name   string
	// chains are created first (maps jump to them), then sets, then
	// every chain's rules; the base chain comes last.
	chains []*chain
	sets   []*set
}

type set struct {
	s     nftables.Set
	elems []nftables.SetElement
}

type chain struct {
	name string
	// base chains hook into forward at filter priority.
	base  bool
	rules []rule
}

type rule struct {
	exprs   []expr.Any
	comment string
}

// renderOptions shape the program.
type renderOptions struct {
	table  string
	bridge string
	// fallback adds the bridge-family table that drops bridged frames
	// to and from isolated pods (used when bridged traffic would bypass
	// the inet forward hook).
	fallback bool
	// describe fills program.text with a readable listing (tests, debug
	// logs); it costs more than rendering itself.
	describe bool
}

// Base chain, map and set names. Names stay short: older kernels allow 32
// bytes.
const (
	setSelf4     = "self4"
	setSelf6     = "self6"
	chainForward = "forward"
	mapIngress4  = "ingress4"
	mapIngress6  = "ingress6"
	mapEgress4   = "egress4"
	mapEgress6   = "egress6"
)

// render turns a ruleset into nftables objects. It is pure (no I/O), so
// the benchmark measures it together with the compiler.
func render(rs policy.Ruleset, o renderOptions) *program {
	r := &renderer{opt: o, sets: map[string]bool{}}
	if o.describe {
		r.text = &strings.Builder{}
	}
	r.inet = table{family: nftables.TableFamilyINet, name: o.table}
	fwd := &chain{name: chainForward, base: true}

	maps := map[string]*set{}
	for _, name := range []string{mapIngress4, mapIngress6, mapEgress4, mapEgress6} {
		key := nftables.TypeIPAddr
		if strings.HasSuffix(name, "6") {
			key = nftables.TypeIP6Addr
		}
		maps[name] = &set{s: nftables.Set{Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict}}
	}
	// One chain per distinct *Allow: the compiler shares it between pods
	// isolated by the same policies.
	chains := map[*policy.Allow]*chain{}
	self4 := &set{s: nftables.Set{Name: setSelf4, KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr), Concatenation: true}}
	self6 := &set{s: nftables.Set{Name: setSelf6, KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr), Concatenation: true}}
	for _, t := range rs.Targets {
		for _, ip := range t.IPs {
			k := append(ip.AsSlice(), ip.AsSlice()...)
			if ip.Is4() {
				self4.elems = append(self4.elems, nftables.SetElement{Key: k})
			} else {
				self6.elems = append(self6.elems, nftables.SetElement{Key: k})
			}
		}
		for _, dir := range []struct {
			allow   *policy.Allow
			ingress bool
		}{{t.Ingress, true}, {t.Egress, false}} {
			if dir.allow == nil {
				continue
			}
			ch := chains[dir.allow]
			if ch == nil {
				ch = r.targetChain(len(chains), t, dir.allow, dir.ingress)
				chains[dir.allow] = ch
				r.inet.chains = append(r.inet.chains, ch)
			}
			for _, ip := range t.IPs {
				name := mapIngress4
				switch {
				case dir.ingress && ip.Is6():
					name = mapIngress6
				case !dir.ingress && ip.Is4():
					name = mapEgress4
				case !dir.ingress:
					name = mapEgress6
				}
				m := maps[name]
				m.elems = append(m.elems, nftables.SetElement{Key: ip.AsSlice(),
					VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.name}})
				r.textf("map %s: %s -> jump %s", name, ip, ch.name)
			}
		}
	}
	r.inet.sets = append(r.inet.sets, r.addrSets...)
	r.inet.sets = append(r.inet.sets, self4, self6)
	for _, name := range []string{mapIngress4, mapIngress6, mapEgress4, mapEgress6} {
		r.inet.sets = append(r.inet.sets, maps[name])
	}

	fwd.rules = []rule{
		{exprs: append(ctEstablished(), &expr.Verdict{Kind: expr.VerdictAccept}), comment: "replies and related traffic"},
		// A pod reaching itself (through a Service that picked it) is
		// never blocked, like loopback.
		{exprs: selfMatch(true), comment: "isolated pod to itself (IPv4)"},
		{exprs: selfMatch(false), comment: "isolated pod to itself (IPv6)"},
		{exprs: r.dispatch(false, true, mapIngress4), comment: "new connections to isolated pods (IPv4)"},
		{exprs: r.dispatch(false, false, mapIngress6), comment: "new connections to isolated pods (IPv6)"},
		{exprs: r.dispatch(true, true, mapEgress4), comment: "new connections from isolated pods (IPv4)"},
		{exprs: r.dispatch(true, false, mapEgress6), comment: "new connections from isolated pods (IPv6)"},
	}
	r.inet.chains = append(r.inet.chains, fwd)
	r.textf("chain forward: ct established,related accept; oif %[1]s daddr vmap ingress; iif %[1]s saddr vmap egress", o.bridge)

	p := &program{inet: r.inet}
	if o.fallback {
		p.bridge = fallbackTable(rs, o, r)
	}
	r.textf("options: table %s bridge %s fallback %v", o.table, o.bridge, o.fallback)
	if r.text != nil {
		p.text = r.text.String()
	}
	p.hash = hashOf(rs, o)
	// The hash rides on the first rule's comment: Apply compares it to
	// skip rewriting an unchanged ruleset.
	fwd.rules[0].comment = commentPrefix + p.hash + " " + fwd.rules[0].comment
	return p
}

// commentPrefix starts the comment of our base chain's first rule.
const commentPrefix = "wgmesh-policy "

type renderer struct {
	opt      renderOptions
	inet     table
	sets     map[string]bool
	addrSets []*set
	text     *strings.Builder // nil unless describing
}

func (r *renderer) textf(format string, args ...any) {
	if r.text == nil {
		return
	}
	fmt.Fprintf(r.text, format, args...)
	r.text.WriteByte('\n')
}

// hashOf identifies the program render(rs, o) builds, without building a
// listing: equal rulesets render equal programs. Address sets enter by
// their content hash.
func hashOf(rs policy.Ruleset, o renderOptions) string {
	h := sha256.New()
	var b []byte
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str("v1")
	str(o.table)
	str(o.bridge)
	if o.fallback {
		str("fallback")
	}
	allow := func(tag string, a *policy.Allow) {
		str(tag)
		if a == nil {
			str("open")
			return
		}
		for _, p := range a.Policies {
			str(p)
		}
		for _, m := range a.Rules {
			if m.Peers == nil {
				str("any")
			} else {
				str(m.Peers.ID)
			}
			for _, pr := range m.Ports {
				b = append(b, byte(pr.Protocol), byte(pr.From>>8), byte(pr.From), byte(pr.To>>8), byte(pr.To))
			}
			str("/")
		}
	}
	for _, t := range rs.Targets {
		str(t.Pod.String())
		for _, ip := range t.IPs {
			a := ip.As16()
			b = append(b, a[:]...)
		}
		allow("i", t.Ingress)
		allow("e", t.Egress)
		if len(b) > 4096 {
			h.Write(b)
			b = b[:0]
		}
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// targetChain is the chain of the pods sharing one Allow, for one
// direction: allowed new connections return to the base chain (which goes
// on to check the other direction); everything else is dropped. t is the
// first such pod (for naming and families).
func (r *renderer) targetChain(n int, t policy.Target, a *policy.Allow, ingress bool) *chain {
	what := "egress"
	ch := &chain{name: "e" + strconv.Itoa(n)}
	if ingress {
		what = "ingress"
		ch.name = "i" + strconv.Itoa(n)
	}
	r.textf("chain %s: %s %s policies %s", ch.name, what, t.Pod, strings.Join(a.Policies, ","))
	// The remote end is the source for ingress, the destination for
	// egress.
	remoteIsSrc := ingress
	for _, m := range a.Rules {
		for _, fam := range []bool{true, false} {
			var match []expr.Any
			if m.Peers != nil {
				name, ok := r.addrSet(m.Peers, fam)
				if !ok {
					continue // no addresses of this family
				}
				match = append(nfproto(fam), addrLookup(remoteIsSrc, fam, name)...)
			} else if !r.hasFamily(t, fam) {
				continue
			} else {
				match = nfproto(fam)
			}
			peers := "any"
			if m.Peers != nil {
				peers = "@" + setName(m.Peers, fam)
			}
			if len(m.Ports) == 0 {
				ch.rules = append(ch.rules, rule{exprs: append(match, verdictReturn)})
				r.textf("  v4=%v peers %s any port return", fam, peers)
				continue
			}
			for _, pr := range m.Ports {
				e := append(append([]expr.Any(nil), match...), portMatch(pr)...)
				ch.rules = append(ch.rules, rule{exprs: append(e, verdictReturn)})
				r.textf("  v4=%v peers %s %s return", fam, peers, pr)
			}
		}
	}
	ch.rules = append(ch.rules, rule{
		exprs:   []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}},
		comment: "deny " + what + " (" + strings.Join(a.Policies, " ") + ")",
	})
	r.textf("  drop")
	return ch
}

// hasFamily: only render any-peer rules for the families the pod has.
func (r *renderer) hasFamily(t policy.Target, v4 bool) bool {
	for _, ip := range t.IPs {
		if ip.Is4() == v4 {
			return true
		}
	}
	return false
}

func setName(s *policy.AddrSet, v4 bool) string {
	if v4 {
		return "a" + s.ID + "4"
	}
	return "a" + s.ID + "6"
}

// addrSet declares the interval set holding s's addresses of one family
// (once per program) and returns its name; false if s has none of them.
func (r *renderer) addrSet(s *policy.AddrSet, v4 bool) (string, bool) {
	name := setName(s, v4)
	if r.sets[name] {
		return name, true
	}
	n := 0
	for _, rg := range s.Ranges {
		if rg.From.Is4() == v4 {
			n += 2
		}
	}
	if n == 0 {
		return "", false
	}
	width := 16
	if v4 {
		width = 4
	}
	// One backing array for every key: a set can hold thousands.
	buf := make([]byte, 0, n*width)
	key := func(a netip.Addr) []byte {
		start := len(buf)
		buf = append(buf, a.AsSlice()...)
		return buf[start:len(buf):len(buf)]
	}
	elems := make([]nftables.SetElement, 0, n)
	for _, rg := range s.Ranges {
		if rg.From.Is4() != v4 {
			continue
		}
		elems = append(elems, nftables.SetElement{Key: key(rg.From)})
		// The interval's end is exclusive; a range reaching the
		// family's last address has none.
		if next := rg.To.Next(); next.IsValid() {
			elems = append(elems, nftables.SetElement{Key: key(next), IntervalEnd: true})
		}
	}
	typ := nftables.TypeIPAddr
	if !v4 {
		typ = nftables.TypeIP6Addr
	}
	r.sets[name] = true
	r.addrSets = append(r.addrSets, &set{s: nftables.Set{Name: name, KeyType: typ, Interval: true}, elems: elems})
	if r.text == nil {
		return name, true
	}
	var b strings.Builder
	for _, rg := range s.Ranges {
		if rg.From.Is4() == v4 {
			fmt.Fprintf(&b, " %s-%s", rg.From, rg.To)
		}
	}
	r.textf("set %s:%s", name, b.String())
	return name, true
}

// dispatch sends new connections of isolated pods to their chains: to the
// pod (output on the bridge, keyed by destination) or from it (input from
// the bridge, keyed by source).
func (r *renderer) dispatch(fromPod, v4 bool, m string) []expr.Any {
	e := nfproto(v4)
	if fromPod {
		e = append(e, ifname(expr.MetaKeyIIFNAME, r.opt.bridge)...)
	} else {
		e = append(e, ifname(expr.MetaKeyOIFNAME, r.opt.bridge)...)
	}
	e = append(e, addrPayload(fromPod, v4)...)
	return append(e, &expr.Lookup{SourceRegister: 1, SetName: m, IsDestRegSet: true, DestRegister: 0})
}

// fallbackTable drops bridged frames (pod to pod on this node) to pods
// isolated for ingress and from pods isolated for egress. Without
// conntrack in the bridge family it cannot tell replies or allowed
// connections apart, so it denies them all: closed, never open.
func fallbackTable(rs policy.Ruleset, o renderOptions, r *renderer) *table {
	t := &table{family: nftables.TableFamilyBridge, name: o.table}
	names := []string{mapIngress4, mapIngress6, mapEgress4, mapEgress6}
	sets := map[string]*set{}
	for _, n := range names {
		key := nftables.TypeIPAddr
		if strings.HasSuffix(n, "6") {
			key = nftables.TypeIP6Addr
		}
		sets[n] = &set{s: nftables.Set{Name: n, KeyType: key}}
	}
	for _, tg := range rs.Targets {
		for _, ip := range tg.IPs {
			if tg.Ingress != nil {
				n := map[bool]string{true: mapIngress4, false: mapIngress6}[ip.Is4()]
				sets[n].elems = append(sets[n].elems, nftables.SetElement{Key: ip.AsSlice()})
			}
			if tg.Egress != nil {
				n := map[bool]string{true: mapEgress4, false: mapEgress6}[ip.Is4()]
				sets[n].elems = append(sets[n].elems, nftables.SetElement{Key: ip.AsSlice()})
			}
		}
	}
	fwd := &chain{name: chainForward, base: true}
	for _, n := range names {
		t.sets = append(t.sets, sets[n])
		v4 := strings.HasSuffix(n, "4")
		src := strings.HasPrefix(n, "egress")
		e := append(etherType(v4), addrPayload(src, v4)...)
		e = append(e, &expr.Lookup{SourceRegister: 1, SetName: n}, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
		fwd.rules = append(fwd.rules, rule{exprs: e, comment: "no br_netfilter: bridged traffic of isolated pods fails closed (" + n + ")"})
		r.textf("fallback %s: %d addresses", n, len(sets[n].elems))
	}
	t.chains = []*chain{fwd}
	return t
}

// Expression helpers. Register 1 is the scratch register throughout.

// Shared expressions: rules only read them (they are marshalled when the
// rule is queued), so one instance serves every rule.
var (
	nfproto4 = []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
	nfproto6 = []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
	}
	verdictReturn = &expr.Verdict{Kind: expr.VerdictReturn}
	l4protoLoad   = &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}
	dportLoad     = &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	addrLoads     = map[[2]bool]*expr.Payload{}
)

func init() {
	for _, src := range []bool{true, false} {
		for _, v4 := range []bool{true, false} {
			off, n := uint32(16), uint32(4)
			switch {
			case v4 && src:
				off = 12
			case !v4 && src:
				off, n = 8, 16
			case !v4:
				off, n = 24, 16
			}
			addrLoads[[2]bool{src, v4}] = &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
		}
	}
}

// nfproto returns a fresh slice (callers append to it) of the shared
// family match.
func nfproto(v4 bool) []expr.Any {
	if v4 {
		return append(make([]expr.Any, 0, 8), nfproto4...)
	}
	return append(make([]expr.Any, 0, 8), nfproto6...)
}

// etherType matches the frame's ethertype (bridge family).
func etherType(v4 bool) []expr.Any {
	t := uint16(unix.ETH_P_IPV6)
	if v4 {
		t = unix.ETH_P_IP
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// addrPayload loads the source or destination address into register 1.
func addrPayload(src, v4 bool) []expr.Any { return []expr.Any{addrLoads[[2]bool{src, v4}]} }

// selfMatch accepts packets whose source and destination are the same
// isolated pod: "saddr . daddr" looked up in the self set. Concatenations
// use the 32-bit registers (NFT_REG32_00 = 8 and up).
func selfMatch(v4 bool) []expr.Any {
	src := *addrLoads[[2]bool{true, v4}]
	dst := *addrLoads[[2]bool{false, v4}]
	src.DestRegister = 8
	dst.DestRegister = 9
	name := setSelf4
	if !v4 {
		dst.DestRegister = 12
		name = setSelf6
	}
	return append(nfproto(v4), &src, &dst,
		&expr.Lookup{SourceRegister: 8, SetName: name}, &expr.Verdict{Kind: expr.VerdictAccept})
}

func addrLookup(src, v4 bool, set string) []expr.Any {
	return append(addrPayload(src, v4), &expr.Lookup{SourceRegister: 1, SetName: set})
}

// portMatch matches the transport protocol and, unless the range covers
// every port, the destination port. The transport header is reassembled
// by conntrack's defragmentation before the forward hook.
func portMatch(pr policy.PortRange) []expr.Any {
	e := []expr.Any{l4protoLoad, protoCmp[pr.Protocol]}
	if e[1] == nil {
		e[1] = &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(pr.Protocol)}}
	}
	if pr.AllPorts() {
		return e
	}
	e = append(e, dportLoad)
	if pr.From == pr.To {
		return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(pr.From)})
	}
	return append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binaryutil.BigEndian.PutUint16(pr.From), ToData: binaryutil.BigEndian.PutUint16(pr.To)})
}

var protoCmp = map[policy.Protocol]*expr.Cmp{
	policy.TCP:  {Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(policy.TCP)}},
	policy.UDP:  {Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(policy.UDP)}},
	policy.SCTP: {Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(policy.SCTP)}},
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}
