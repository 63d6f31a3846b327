package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Input is everything Compile reads: the cluster's pods, namespaces and
// policies, and the node whose pods are enforced.
type Input struct {
	Node       string
	Pods       []Pod
	Namespaces []Namespace
	Policies   []Policy
}

// Ruleset is what this node enforces.
type Ruleset struct {
	// Targets are this node's pods isolated in at least one direction,
	// sorted by pod key. Pods missing here have default allow.
	Targets []Target
	// Problems lists the policies that cannot be enforced and select pods
	// of this node (which then fail closed), sorted by policy.
	Problems []Problem
	// Conflicts are addresses claimed by more than one local pod (stale
	// API data). They are enforced as a pod isolated in every direction
	// any claimant is, allowing nothing, so a mix-up never opens traffic.
	Conflicts []netip.Addr
}

// Target is one local pod with its allow rules per direction.
type Target struct {
	Pod PodKey
	IPs []netip.Addr
	// Ingress and Egress are nil when the pod is not isolated in that
	// direction.
	Ingress, Egress *Allow
}

// Allow lists what an isolated pod may receive (ingress) or send (egress)
// when a connection starts.
type Allow struct {
	// Policies isolating the pod in this direction ("namespace/name"),
	// sorted.
	Policies []string
	// Rules allowed, each a peer set and port list, sorted and free of
	// duplicates. No rules means deny every new connection.
	Rules []Match
}

// Match allows traffic whose remote address is in Peers (nil: any address)
// on any of Ports (empty: any protocol and port).
type Match struct {
	Peers *AddrSet
	Ports []PortRange
}

// AddrSet is an interned set of addresses of either family: sorted,
// disjoint, non-adjacent ranges (what an nftables interval set holds).
// Equal sets within one Ruleset share one *AddrSet, so a dataplane can
// program each set once.
type AddrSet struct {
	// ID is a short hash of Ranges, stable across compiles.
	ID     string
	Ranges []Range
}

// Prefixes returns the set as the fewest prefixes (for logs and humans).
func (s *AddrSet) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range s.Ranges {
		out = append(out, rangePrefixes(r)...)
	}
	return out
}

// PortRange is Protocol's ports From..To; From 0 means every port of the
// protocol.
type PortRange struct {
	Protocol Protocol
	From, To uint16
}

// AllPorts reports whether r covers every port of its protocol.
func (r PortRange) AllPorts() bool { return r.From == 0 }

func (r PortRange) String() string {
	switch {
	case r.AllPorts():
		return r.Protocol.String()
	case r.From == r.To:
		return fmt.Sprintf("%s/%d", r.Protocol, r.From)
	}
	return fmt.Sprintf("%s/%d-%d", r.Protocol, r.From, r.To)
}

// Problem is a policy the engine cannot express.
type Problem struct {
	Policy string
	Err    error
	// Pods are the local pods it selects (failing closed), sorted.
	Pods []PodKey
}

// Compile computes the ruleset for in.Node's pods. It never fails: bad
// policies become Problems and fail closed.
func Compile(in Input) Ruleset {
	c := newCompiler(in)
	return c.run()
}

type compiler struct {
	in      Input
	nsLabel map[string]map[string]string
	// all are the pods that can be peers (not host-network, with
	// addresses), sorted by address; byNS holds their positions in all
	// per namespace.
	all  []*Pod
	byNS map[string][]int
	// local are the pods of this node that can be targets, by namespace.
	local map[string][]*Pod
	sets  map[[sha256.Size]byte]*AddrSet
	// Rules with equal peers and ports (frequent: policies are often
	// copies of each other across namespaces) are evaluated once.
	ingressCache map[string]ingressRule
	egressCache  map[string][]Match
	peerCache    map[string]peers
}

func newCompiler(in Input) *compiler {
	c := &compiler{
		in:      in,
		nsLabel: make(map[string]map[string]string, len(in.Namespaces)),
		byNS:    map[string][]int{},
		local:   map[string][]*Pod{},
		sets:    map[[sha256.Size]byte]*AddrSet{},

		ingressCache: map[string]ingressRule{},
		egressCache:  map[string][]Match{},
		peerCache:    map[string]peers{},
	}
	for _, ns := range in.Namespaces {
		c.nsLabel[ns.Name] = ns.Labels
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		if p.HostNetwork || len(p.IPs) == 0 {
			continue
		}
		c.all = append(c.all, p)
	}
	// Sorted by address, peer lists come out (nearly) sorted and address
	// sets need no sorting.
	slices.SortFunc(c.all, func(a, b *Pod) int { return a.IPs[0].Compare(b.IPs[0]) })
	for i, p := range c.all {
		c.byNS[p.Namespace] = append(c.byNS[p.Namespace], i)
		if p.Node == in.Node && in.Node != "" {
			c.local[p.Namespace] = append(c.local[p.Namespace], p)
		}
	}
	return c
}

// targetState accumulates one local pod's rules.
type targetState struct {
	pod     *Pod
	ingress *allowState
	egress  *allowState
}

type allowState struct {
	policies []string
	rules    []Match
}

func (c *compiler) run() Ruleset {
	var rs Ruleset
	targets := map[PodKey]*targetState{}
	get := func(p *Pod) *targetState {
		t := targets[p.Key()]
		if t == nil {
			t = &targetState{pod: p}
			targets[p.Key()] = t
		}
		return t
	}

	policies := slices.Clone(c.in.Policies)
	slices.SortFunc(policies, func(a, b Policy) int { return strings.Compare(a.Key(), b.Key()) })
	// namedIngress marks policies whose ingress rules name ports: their
	// rules differ per target pod.
	namedIngress := map[string]bool{}
	for i := range policies {
		pol := &policies[i]
		key := pol.Key()
		for _, r := range pol.IngressRules {
			for _, p := range r.Ports {
				if p.Name != "" {
					namedIngress[key] = true
				}
			}
		}
		err := pol.Validate()
		ingress, egress := pol.Ingress, pol.Egress
		if err != nil && !ingress && !egress {
			ingress, egress = true, true // which directions it meant is unknown
		}
		var selected []*Pod
		badSelector := err != nil && pol.PodSelector.Validate() != nil
		podSel := pol.PodSelector.matcher()
		for _, p := range c.local[pol.Namespace] {
			// A selector we cannot evaluate might select any pod of
			// its namespace: all of them fail closed.
			if badSelector || podSel.matches(p.Labels) {
				selected = append(selected, p)
			}
		}
		if err != nil {
			if len(selected) > 0 {
				pr := Problem{Policy: key, Err: err}
				for _, p := range selected {
					pr.Pods = append(pr.Pods, p.Key())
				}
				slices.SortFunc(pr.Pods, PodKey.compare)
				rs.Problems = append(rs.Problems, pr)
			}
			for _, p := range selected {
				t := get(p)
				if ingress {
					t.ingress = addPolicy(t.ingress, key, nil)
				}
				if egress {
					t.egress = addPolicy(t.egress, key, nil)
				}
			}
			continue
		}
		if len(selected) == 0 {
			continue
		}
		var egressMatches []Match
		if egress {
			for _, r := range pol.EgressRules {
				egressMatches = append(egressMatches, c.egressMatches(pol.Namespace, r)...)
			}
		}
		var ingressRules []ingressRule
		if ingress {
			for _, r := range pol.IngressRules {
				ingressRules = append(ingressRules, c.ingressRule(pol.Namespace, r))
			}
		}
		for _, p := range selected {
			t := get(p)
			if ingress {
				var ms []Match
				for _, r := range ingressRules {
					if m, ok := r.forTarget(p); ok {
						ms = append(ms, m)
					}
				}
				t.ingress = addPolicy(t.ingress, key, ms)
			}
			if egress {
				t.egress = addPolicy(t.egress, key, egressMatches)
			}
		}
	}

	owners := map[netip.Addr][]PodKey{}
	for _, t := range targets {
		for _, ip := range t.pod.IPs {
			owners[ip] = nil
		}
	}
	// Every local pod (isolated or not) claims its addresses: an address
	// shared between an isolated and an open pod is a conflict too.
	for _, pods := range c.local {
		for _, p := range pods {
			for _, ip := range p.IPs {
				if _, ok := owners[ip]; ok {
					owners[ip] = append(owners[ip], p.Key())
				}
			}
		}
	}
	// Pods isolated by the same policies get the same rules (unless named
	// ingress ports resolve differently per pod): share one *Allow, so
	// finishing and rendering happen once per distinct set of policies.
	memo := map[string]*Allow{}
	finish := func(a *allowState, dir string) *Allow {
		if a == nil {
			return nil
		}
		if dir == "i" && slices.ContainsFunc(a.policies, func(k string) bool { return namedIngress[k] }) {
			return a.finish()
		}
		key := dir + strings.Join(a.policies, "\x00")
		if out, ok := memo[key]; ok {
			return out
		}
		out := a.finish()
		memo[key] = out
		return out
	}
	for _, t := range targets {
		out := Target{Pod: t.pod.Key(), Ingress: finish(t.ingress, "i"), Egress: finish(t.egress, "e")}
		for _, ip := range t.pod.IPs {
			if len(owners[ip]) == 1 {
				out.IPs = append(out.IPs, ip)
			}
		}
		slices.SortFunc(out.IPs, netip.Addr.Compare)
		out.IPs = slices.Compact(out.IPs)
		rs.Targets = append(rs.Targets, out)
	}
	slices.SortFunc(rs.Targets, func(a, b Target) int { return a.Pod.compare(b.Pod) })
	for ip, o := range owners {
		if len(o) > 1 {
			rs.Conflicts = append(rs.Conflicts, ip)
		}
	}
	slices.SortFunc(rs.Conflicts, netip.Addr.Compare)
	// A conflicting address is enforced as its own target: isolated in
	// each direction any claimant is, allowing nothing.
	for _, ip := range rs.Conflicts {
		ct := Target{Pod: PodKey{Name: "conflict-" + ip.String()}, IPs: []netip.Addr{ip}}
		for _, t := range targets {
			if !slices.Contains(t.pod.IPs, ip) {
				continue
			}
			if t.ingress != nil {
				ct.Ingress = &Allow{Policies: mergeSorted(ct.Ingress, t.ingress.policies)}
			}
			if t.egress != nil {
				ct.Egress = &Allow{Policies: mergeSorted(ct.Egress, t.egress.policies)}
			}
		}
		rs.Targets = append(rs.Targets, ct)
	}
	rs.Targets = slices.DeleteFunc(rs.Targets, func(t Target) bool { return len(t.IPs) == 0 })
	return rs
}

func mergeSorted(a *Allow, b []string) []string {
	var out []string
	if a != nil {
		out = slices.Clone(a.Policies)
	}
	out = append(out, b...)
	slices.Sort(out)
	return slices.Compact(out)
}

func addPolicy(a *allowState, key string, ms []Match) *allowState {
	if a == nil {
		a = &allowState{}
	}
	a.policies = append(a.policies, key)
	a.rules = append(a.rules, ms...)
	return a
}

// finish sorts and deduplicates the rules.
func (a *allowState) finish() *Allow {
	if a == nil {
		return nil
	}
	out := &Allow{Policies: slices.Clone(a.policies)}
	slices.Sort(out.Policies)
	out.Policies = slices.Compact(out.Policies)
	rules := slices.Clone(a.rules)
	slices.SortFunc(rules, compareMatch)
	out.Rules = slices.CompactFunc(rules, func(x, y Match) bool { return compareMatch(x, y) == 0 })
	if len(out.Rules) == 0 {
		out.Rules = nil
	}
	return out
}

func compareMatch(a, b Match) int {
	switch {
	case a.Peers == nil && b.Peers != nil:
		return -1
	case a.Peers != nil && b.Peers == nil:
		return 1
	case a.Peers != nil && a.Peers != b.Peers:
		if c := slices.CompareFunc(a.Peers.Ranges, b.Peers.Ranges, compareRange); c != 0 {
			return c
		}
	}
	return slices.CompareFunc(a.Ports, b.Ports, func(x, y PortRange) int {
		return cmp.Or(cmp.Compare(x.Protocol, y.Protocol), cmp.Compare(x.From, y.From), cmp.Compare(x.To, y.To))
	})
}

// peers is a rule's peer list evaluated once per policy.
type peers struct {
	any    bool
	pods   []*Pod  // pods chosen by selectors
	blocks []Range // ipBlocks minus their exceptions
}

func (c *compiler) peers(policyNS string, ps []Peer) peers {
	if len(ps) == 0 {
		return peers{any: true}
	}
	key := peersKey(policyNS, ps)
	if out, ok := c.peerCache[key]; ok {
		return out
	}
	out := c.evalPeers(policyNS, ps)
	c.peerCache[key] = out
	return out
}

func (c *compiler) evalPeers(policyNS string, ps []Peer) peers {
	var out peers
	// Marking positions in c.all (sorted by address) and collecting them
	// in order yields the chosen pods sorted and without duplicates.
	chosen := make([]bool, len(c.all))
	any := false
	for _, p := range ps {
		if p.IPBlock != nil {
			out.blocks = append(out.blocks, blockRanges(*p.IPBlock)...)
			continue
		}
		var candidates []int
		if p.NamespaceSelector == nil {
			candidates = c.byNS[policyNS]
		} else {
			m := p.NamespaceSelector.matcher()
			for ns, idx := range c.byNS {
				if m.matches(c.nsLabel[ns]) {
					candidates = append(candidates, idx...)
				}
			}
		}
		var podSel matcher
		if p.PodSelector != nil {
			podSel = p.PodSelector.matcher()
		}
		for _, i := range candidates {
			if !chosen[i] && (p.PodSelector == nil || podSel.matches(c.all[i].Labels)) {
				chosen[i] = true
				any = true
			}
		}
	}
	if any {
		for i, ok := range chosen {
			if ok {
				out.pods = append(out.pods, c.all[i])
			}
		}
	}
	return out
}

// addrs interns the addresses of the given pods and blocks; nil if empty.
func (c *compiler) addrs(pods []*Pod, blocks []Range) *AddrSet {
	rs := slices.Clone(blocks)
	for _, p := range pods {
		for _, ip := range p.IPs {
			rs = append(rs, Range{ip, ip})
		}
	}
	if len(rs) == 0 {
		return nil
	}
	return c.intern(mergeRangesInPlace(rs))
}

// intern returns the one *AddrSet holding exactly rs (merged ranges). Sets
// are keyed by a SHA-256 of their ranges, streamed so a set of thousands
// of addresses needs no key buffer.
func (c *compiler) intern(rs []Range) *AddrSet {
	h := sha256.New()
	var buf [33]byte
	for _, r := range rs {
		f, t := r.From.As16(), r.To.As16()
		copy(buf[:16], f[:])
		copy(buf[16:32], t[:])
		buf[32] = 6
		if r.From.Is4() {
			buf[32] = 4
		}
		h.Write(buf[:])
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if s, ok := c.sets[sum]; ok {
		return s
	}
	s := &AddrSet{ID: hex.EncodeToString(sum[:6]), Ranges: rs}
	c.sets[sum] = s
	return s
}

// ingressRule is an ingress rule with its peers evaluated; named ports are
// resolved per target, against the target pod's own container ports.
type ingressRule struct {
	any   bool
	peers *AddrSet // nil with !any: matches no address
	ports []Port
	// fixed is the rule's match when it names no port (the same for
	// every target); ok reports whether it matches anything.
	fixed      *Match
	fixedOK    bool
	namedPorts bool
}

func (c *compiler) ingressRule(ns string, r Rule) ingressRule {
	key := ruleKey(ns, r)
	if out, ok := c.ingressCache[key]; ok {
		return out
	}
	p := c.peers(ns, r.Peers)
	out := ingressRule{any: p.any, ports: r.Ports}
	if !p.any {
		out.peers = c.addrs(p.pods, p.blocks)
	}
	if !slices.ContainsFunc(r.Ports, func(p Port) bool { return p.Name != "" }) {
		m, ok := out.forTarget(nil)
		out.fixed, out.fixedOK = &m, ok
	}
	c.ingressCache[key] = out
	return out
}

// ruleKey identifies what a rule's evaluation depends on: its peers
// (peersKey) and its ports.
func ruleKey(ns string, r Rule) string {
	var b strings.Builder
	b.WriteString(peersKey(ns, r.Peers))
	for _, p := range r.Ports {
		fmt.Fprintf(&b, "|%d:%d-%d:%s", p.Protocol, p.Port, p.EndPort, p.Name)
	}
	return b.String()
}

// peersKey identifies a peer list: its selectors and blocks and, if a peer
// has no namespaceSelector, the policy's namespace.
func peersKey(ns string, ps []Peer) string {
	if len(ps) == 0 {
		return "any"
	}
	var b strings.Builder
	needNS := false
	sel := func(s *Selector) {
		if s == nil {
			b.WriteString("-")
			return
		}
		b.WriteString("{")
		b.WriteString(s.String())
		b.WriteString("}")
	}
	for _, p := range ps {
		b.WriteString("|p")
		sel(p.PodSelector)
		sel(p.NamespaceSelector)
		if p.IPBlock != nil {
			b.WriteString(p.IPBlock.CIDR.String())
			for _, e := range p.IPBlock.Except {
				b.WriteString("!" + e.String())
			}
		} else if p.NamespaceSelector == nil {
			needNS = true
		}
	}
	if needNS {
		b.WriteString("|ns=" + ns)
	}
	return b.String()
}

func (r ingressRule) forTarget(target *Pod) (Match, bool) {
	if r.fixed != nil {
		return *r.fixed, r.fixedOK
	}
	if !r.any && r.peers == nil {
		return Match{}, false
	}
	ports, ok := resolvePorts(r.ports, target)
	if !ok {
		return Match{}, false
	}
	return Match{Peers: r.peers, Ports: ports}, true
}

// resolvePorts turns rule ports into ranges, resolving named ports against
// pod (which may be nil: then named ports resolve to nothing). It reports
// false when the rule has ports but none of them resolves: such a rule
// allows nothing.
func resolvePorts(ports []Port, pod *Pod) ([]PortRange, bool) {
	if len(ports) == 0 {
		return nil, true
	}
	var out []PortRange
	for _, p := range ports {
		if p.Name == "" {
			out = append(out, numericRange(p))
			continue
		}
		if pod == nil {
			continue
		}
		for _, cp := range pod.Ports {
			if cp.Name == p.Name && cp.Protocol == p.Protocol {
				out = append(out, PortRange{Protocol: p.Protocol, From: cp.Port, To: cp.Port})
			}
		}
	}
	return canonicalPorts(out), len(out) > 0
}

func numericRange(p Port) PortRange {
	switch {
	case p.Port == 0:
		return PortRange{Protocol: p.Protocol}
	case p.EndPort == 0:
		return PortRange{Protocol: p.Protocol, From: p.Port, To: p.Port}
	}
	return PortRange{Protocol: p.Protocol, From: p.Port, To: p.EndPort}
}

// canonicalPorts sorts ranges and merges overlapping or adjacent ones of
// the same protocol; an all-ports entry absorbs the protocol's others.
func canonicalPorts(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(x, y PortRange) int {
		return cmp.Or(cmp.Compare(x.Protocol, y.Protocol), cmp.Compare(x.From, y.From), cmp.Compare(x.To, y.To))
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		cur := &out[len(out)-1]
		if cur.Protocol == r.Protocol && (cur.AllPorts() || uint32(r.From) <= uint32(cur.To)+1) {
			if !cur.AllPorts() && r.To > cur.To {
				cur.To = r.To
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// egressMatches evaluates an egress rule. Named ports resolve against the
// destination pods: each resolved port number gets the addresses of the
// pods that define it.
func (c *compiler) egressMatches(ns string, r Rule) []Match {
	key := ruleKey(ns, r)
	if out, ok := c.egressCache[key]; ok {
		return out
	}
	out := c.evalEgress(ns, r)
	c.egressCache[key] = out
	return out
}

func (c *compiler) evalEgress(ns string, r Rule) []Match {
	p := c.peers(ns, r.Peers)
	var numeric []Port
	named := false
	for _, port := range r.Ports {
		if port.Name == "" {
			numeric = append(numeric, port)
		} else {
			named = true
		}
	}
	var out []Match
	var all *AddrSet // nil = any
	if !p.any {
		all = c.addrs(p.pods, p.blocks)
	}
	if len(r.Ports) == 0 {
		if p.any || all != nil {
			out = append(out, Match{Peers: all})
		}
		return out
	}
	if len(numeric) > 0 && (p.any || all != nil) {
		ports, _ := resolvePorts(numeric, nil)
		out = append(out, Match{Peers: all, Ports: ports})
	}
	if !named {
		return out
	}
	// Destinations that can carry a named port are pods: those chosen by
	// selectors, plus (for ipBlocks or "any") pods whose addresses lie in
	// the blocks or anywhere.
	dests := p.pods
	chosen := make(map[*Pod]bool, len(p.pods))
	for _, d := range p.pods {
		chosen[d] = true
	}
	if p.any {
		dests = c.all
	} else if len(p.blocks) > 0 {
		dests = slices.Clone(dests)
		for _, pod := range c.all {
			if chosen[pod] {
				continue
			}
			for _, ip := range pod.IPs {
				if rangesContain(p.blocks, ip) {
					dests = append(dests, pod)
					break
				}
			}
		}
	}
	type key struct {
		proto Protocol
		port  uint16
	}
	groups := map[key][]Range{}
	for _, d := range dests {
		for _, port := range r.Ports {
			if port.Name == "" {
				continue
			}
			for _, cp := range d.Ports {
				if cp.Name != port.Name || cp.Protocol != port.Protocol {
					continue
				}
				k := key{cp.Protocol, cp.Port}
				for _, ip := range d.IPs {
					// A pod reached through an ipBlock counts only with
					// its addresses inside the block.
					if p.any || chosen[d] || rangesContain(p.blocks, ip) {
						groups[k] = append(groups[k], Range{ip, ip})
					}
				}
			}
		}
	}
	for k, ps := range groups {
		out = append(out, Match{Peers: c.intern(mergeRangesInPlace(ps)), Ports: []PortRange{{Protocol: k.proto, From: k.port, To: k.port}}})
	}
	slices.SortFunc(out, compareMatch)
	return out
}

func compareRange(a, b Range) int { return cmp.Or(a.From.Compare(b.From), a.To.Compare(b.To)) }

func rangesContain(rs []Range, a netip.Addr) bool {
	for _, r := range rs {
		if r.From.Is4() == a.Is4() && r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0 {
			return true
		}
	}
	return false
}
