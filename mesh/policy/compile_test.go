package policy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const local, remote = "n1", "n2"

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

// set builds an expected AddrSet (IDs are ignored by cmpRuleset).
func set(s ...string) *AddrSet { return &AddrSet{Ranges: Ranges(pfx(s...))} }

func sel(kv ...string) *Selector {
	s := &Selector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func tcp(from, to uint16) PortRange { return PortRange{Protocol: TCP, From: from, To: to} }

// fixture is a small cluster: node n1 (local) and n2, namespaces prod, dev
// and mon.
func fixture() Input {
	return Input{
		Node: local,
		Namespaces: []Namespace{
			{Name: "prod", Labels: map[string]string{"kubernetes.io/metadata.name": "prod", "team": "a", "env": "prod"}},
			{Name: "dev", Labels: map[string]string{"kubernetes.io/metadata.name": "dev", "team": "b", "env": "dev"}},
			{Name: "mon", Labels: map[string]string{"kubernetes.io/metadata.name": "mon", "purpose": "monitoring"}},
		},
		Pods: []Pod{
			{Namespace: "prod", Name: "web", Node: local, Labels: map[string]string{"app": "web", "tier": "front"}, IPs: ips("10.244.1.10", "fd00:1::10"),
				Ports: []ContainerPort{{Name: "http", Protocol: TCP, Port: 8080}, {Name: "metrics", Protocol: TCP, Port: 9090}, {Name: "dns", Protocol: UDP, Port: 5353}}},
			{Namespace: "prod", Name: "db", Node: local, Labels: map[string]string{"app": "db", "tier": "back"}, IPs: ips("10.244.1.11"),
				Ports: []ContainerPort{{Name: "http", Protocol: TCP, Port: 5432}}},
			{Namespace: "dev", Name: "tool", Node: local, Labels: map[string]string{"app": "tool"}, IPs: ips("10.244.1.20")},
			{Namespace: "prod", Name: "api", Node: remote, Labels: map[string]string{"app": "api", "tier": "back"}, IPs: ips("10.244.2.10"),
				Ports: []ContainerPort{{Name: "http", Protocol: TCP, Port: 8081}}},
			{Namespace: "dev", Name: "web", Node: remote, Labels: map[string]string{"app": "web"}, IPs: ips("10.244.2.20"),
				Ports: []ContainerPort{{Name: "http", Protocol: TCP, Port: 8082}, {Name: "http", Protocol: UDP, Port: 8083}}},
			{Namespace: "mon", Name: "prom", Node: remote, Labels: map[string]string{"app": "prom"}, IPs: ips("10.244.2.30")},
			// Never targets nor peers:
			{Namespace: "prod", Name: "hostnet", Node: local, Labels: map[string]string{"app": "web"}, IPs: ips("198.51.100.11"), HostNetwork: true,
				Ports: []ContainerPort{{Name: "http", Protocol: TCP, Port: 80}}},
			{Namespace: "prod", Name: "pending", Node: local, Labels: map[string]string{"app": "web"}},
		},
	}
}

var (
	web  = PodKey{"prod", "web"}
	db   = PodKey{"prod", "db"}
	tool = PodKey{"dev", "tool"}
)

func cmpRuleset(t *testing.T, want, got Ruleset) {
	t.Helper()
	opts := []cmp.Option{
		cmpopts.IgnoreFields(AddrSet{}, "ID"),
		cmpopts.EquateEmpty(),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Transformer("errstring", func(e error) string {
			if e == nil {
				return ""
			}
			return "error"
		}),
	}
	if d := cmp.Diff(want, got, opts...); d != "" {
		t.Errorf("ruleset (-want +got):\n%s", d)
	}
}

func ingressOnly(ns, name string, podSel Selector, rules ...Rule) Policy {
	return Policy{Namespace: ns, Name: name, PodSelector: podSel, Ingress: true, IngressRules: rules}
}

func egressOnly(ns, name string, podSel Selector, rules ...Rule) Policy {
	return Policy{Namespace: ns, Name: name, PodSelector: podSel, Egress: true, EgressRules: rules}
}

func TestCompile(t *testing.T) {
	webIPs := ips("10.244.1.10", "fd00:1::10")
	dbIPs := ips("10.244.1.11")
	toolIPs := ips("10.244.1.20")
	allProd := set("10.244.1.10/31", "10.244.2.10/32", "fd00:1::10/128")

	tests := []struct {
		name     string
		policies []Policy
		want     Ruleset
	}{
		{name: "no policies: default allow", want: Ruleset{}},
		{
			name:     "default deny ingress for a namespace",
			policies: []Policy{ingressOnly("prod", "deny", Selector{})},
			want: Ruleset{Targets: []Target{
				{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/deny"}}},
				{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/deny"}}},
			}},
		},
		{
			name:     "policy in another namespace does not select",
			policies: []Policy{ingressOnly("mon", "deny", Selector{})},
			want:     Ruleset{},
		},
		{
			name:     "podSelector matchLabels",
			policies: []Policy{ingressOnly("prod", "web", *sel("app", "web"))},
			want:     Ruleset{Targets: []Target{{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/web"}}}}},
		},
		{
			name: "podSelector matchExpressions In, NotIn, Exists, DoesNotExist",
			policies: []Policy{
				ingressOnly("prod", "in", Selector{Expressions: []Requirement{{Key: "app", Operator: OpIn, Values: []string{"db", "x"}}}}),
				ingressOnly("prod", "notin", Selector{Expressions: []Requirement{{Key: "tier", Operator: OpNotIn, Values: []string{"back"}}}}),
				egressOnly("prod", "exists", Selector{Expressions: []Requirement{{Key: "tier", Operator: OpExists}}}),
				egressOnly("dev", "notexists", Selector{Expressions: []Requirement{{Key: "tier", Operator: OpDoesNotExist}}}),
			},
			want: Ruleset{Targets: []Target{
				{Pod: tool, IPs: toolIPs, Egress: &Allow{Policies: []string{"dev/notexists"}}},
				{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/in"}}, Egress: &Allow{Policies: []string{"prod/exists"}}},
				{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/notin"}}, Egress: &Allow{Policies: []string{"prod/exists"}}},
			}},
		},
		{
			name: "ingress from podSelector: pods of the policy's namespace on any node",
			policies: []Policy{ingressOnly("prod", "from-back", *sel("app", "web"),
				Rule{Peers: []Peer{{PodSelector: sel("tier", "back")}}})},
			want: Ruleset{Targets: []Target{{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/from-back"},
				Rules: []Match{{Peers: set("10.244.1.11/32", "10.244.2.10/32")}}}}}},
		},
		{
			name: "ingress from namespaceSelector: every pod of the matching namespaces",
			policies: []Policy{ingressOnly("prod", "from-mon", *sel("app", "web"),
				Rule{Peers: []Peer{{NamespaceSelector: sel("purpose", "monitoring")}, {NamespaceSelector: sel("team", "b")}}})},
			want: Ruleset{Targets: []Target{{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/from-mon"},
				Rules: []Match{{Peers: set("10.244.1.20/32", "10.244.2.20/32", "10.244.2.30/32")}}}}}},
		},
		{
			name: "ingress from namespaceSelector and podSelector combined",
			policies: []Policy{ingressOnly("prod", "both", *sel("app", "db"),
				Rule{Peers: []Peer{{NamespaceSelector: sel("team", "b"), PodSelector: sel("app", "web")}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/both"},
				Rules: []Match{{Peers: set("10.244.2.20/32")}}}}}},
		},
		{
			name: "empty namespaceSelector with podSelector: matching pods in all namespaces",
			policies: []Policy{ingressOnly("prod", "any-ns", *sel("app", "db"),
				Rule{Peers: []Peer{{NamespaceSelector: &Selector{}, PodSelector: sel("app", "web")}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/any-ns"},
				Rules: []Match{{Peers: set("10.244.1.10/32", "10.244.2.20/32", "fd00:1::10/128")}}}}}},
		},
		{
			name: "empty podSelector peer: all pods of the policy's namespace",
			policies: []Policy{ingressOnly("prod", "same-ns", *sel("app", "db"),
				Rule{Peers: []Peer{{PodSelector: &Selector{}}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/same-ns"},
				Rules: []Match{{Peers: allProd}}}}}},
		},
		{
			name: "selector peer matching no pod allows nothing",
			policies: []Policy{ingressOnly("prod", "nobody", *sel("app", "db"),
				Rule{Peers: []Peer{{PodSelector: sel("app", "ghost")}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/nobody"}}}}},
		},
		{
			name: "ipBlock with except",
			policies: []Policy{ingressOnly("prod", "block", *sel("app", "db"),
				Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Except: pfx("192.0.2.128/25", "192.0.2.0/28")}},
					{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("2001:db8::/32"), Except: pfx("2001:db8::/33")}}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/block"},
				Rules: []Match{{Peers: set("192.0.2.16/28", "192.0.2.32/27", "192.0.2.64/26", "2001:db8:8000::/33")}}}}}},
		},
		{
			name: "ports: numeric, endPort range, protocol only, UDP and SCTP, overlapping merged",
			policies: []Policy{ingressOnly("prod", "ports", *sel("app", "db"),
				Rule{Ports: []Port{
					{Protocol: TCP, Port: 5432},
					{Protocol: TCP, Port: 8000, EndPort: 8100},
					{Protocol: TCP, Port: 8050, EndPort: 8200},
					{Protocol: TCP, Port: 8201},
					{Protocol: UDP},
					{Protocol: UDP, Port: 53},
					{Protocol: SCTP, Port: 3868, EndPort: 3870},
				}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/ports"},
				Rules: []Match{{Ports: []PortRange{tcp(5432, 5432), tcp(8000, 8201), {Protocol: UDP}, {Protocol: SCTP, From: 3868, To: 3870}}}}}}}},
		},
		{
			name: "ingress named port resolves against each target pod",
			policies: []Policy{ingressOnly("prod", "named", Selector{},
				Rule{Peers: []Peer{{NamespaceSelector: sel("team", "b")}}, Ports: []Port{{Protocol: TCP, Name: "http"}, {Protocol: UDP, Name: "dns"}}})},
			want: Ruleset{Targets: []Target{
				{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/named"},
					Rules: []Match{{Peers: set("10.244.1.20/32", "10.244.2.20/32"), Ports: []PortRange{tcp(5432, 5432)}}}}},
				{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/named"},
					Rules: []Match{{Peers: set("10.244.1.20/32", "10.244.2.20/32"), Ports: []PortRange{tcp(8080, 8080), {Protocol: UDP, From: 5353, To: 5353}}}}}},
			}},
		},
		{
			name: "named port the target lacks (or has with another protocol) allows nothing",
			policies: []Policy{ingressOnly("prod", "named-missing", *sel("app", "db"),
				Rule{Ports: []Port{{Protocol: TCP, Name: "metrics"}, {Protocol: UDP, Name: "http"}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/named-missing"}}}}},
		},
		{
			name: "egress named port resolves against the destination pods",
			policies: []Policy{egressOnly("prod", "to-api", *sel("app", "web"),
				Rule{Peers: []Peer{{PodSelector: sel("tier", "back")}}, Ports: []Port{{Protocol: TCP, Name: "http"}, {Protocol: TCP, Port: 443}}})},
			want: Ruleset{Targets: []Target{{Pod: web, IPs: webIPs, Egress: &Allow{Policies: []string{"prod/to-api"},
				Rules: []Match{
					{Peers: set("10.244.1.11/32"), Ports: []PortRange{tcp(5432, 5432)}},
					{Peers: set("10.244.1.11/32", "10.244.2.10/32"), Ports: []PortRange{tcp(443, 443)}},
					{Peers: set("10.244.2.10/32"), Ports: []PortRange{tcp(8081, 8081)}},
				}}}}},
		},
		{
			name: "egress named port to any destination: every pod defining it, per number and protocol",
			policies: []Policy{egressOnly("dev", "any-http", Selector{},
				Rule{Ports: []Port{{Protocol: UDP, Name: "http"}}})},
			want: Ruleset{Targets: []Target{{Pod: tool, IPs: toolIPs, Egress: &Allow{Policies: []string{"dev/any-http"},
				Rules: []Match{{Peers: set("10.244.2.20/32"), Ports: []PortRange{{Protocol: UDP, From: 8083, To: 8083}}}}}}}},
		},
		{
			name: "egress named port with ipBlock: only pods inside the block",
			policies: []Policy{egressOnly("dev", "block-http", Selector{},
				Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.244.2.0/24"), Except: pfx("10.244.2.20/32")}}},
					Ports: []Port{{Protocol: TCP, Name: "http"}}})},
			want: Ruleset{Targets: []Target{{Pod: tool, IPs: toolIPs, Egress: &Allow{Policies: []string{"dev/block-http"},
				Rules: []Match{{Peers: set("10.244.2.10/32"), Ports: []PortRange{tcp(8081, 8081)}}}}}}},
		},
		{
			name: "egress deny to an ipBlock: allow everything except it",
			policies: []Policy{egressOnly("dev", "not-block", Selector{},
				Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Except: pfx("10.244.2.0/24")}}}})},
			want: Ruleset{Targets: []Target{{Pod: tool, IPs: toolIPs, Egress: &Allow{Policies: []string{"dev/not-block"},
				Rules: []Match{{Peers: set("0.0.0.0/5", "8.0.0.0/7", "10.0.0.0/9", "10.128.0.0/10", "10.192.0.0/11", "10.224.0.0/12",
					"10.240.0.0/14", "10.244.0.0/23", "10.244.3.0/24", "10.244.4.0/22", "10.244.8.0/21", "10.244.16.0/20", "10.244.32.0/19",
					"10.244.64.0/18", "10.244.128.0/17", "10.245.0.0/16", "10.246.0.0/15", "10.248.0.0/13", "11.0.0.0/8", "12.0.0.0/6",
					"16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/1")}}}}}},
		},
		{
			name: "policy types: Ingress and Egress with no egress rules denies all egress",
			policies: []Policy{{Namespace: "dev", Name: "both", PodSelector: Selector{}, Ingress: true, Egress: true,
				IngressRules: []Rule{{}}}},
			want: Ruleset{Targets: []Target{{Pod: tool, IPs: toolIPs,
				Ingress: &Allow{Policies: []string{"dev/both"}, Rules: []Match{{}}},
				Egress:  &Allow{Policies: []string{"dev/both"}}}}},
		},
		{
			name: "egress-only policy leaves ingress open",
			policies: []Policy{egressOnly("dev", "eg", Selector{},
				Rule{Peers: []Peer{{NamespaceSelector: sel("purpose", "monitoring")}}, Ports: []Port{{Protocol: TCP, Port: 9090}}})},
			want: Ruleset{Targets: []Target{{Pod: tool, IPs: toolIPs, Egress: &Allow{Policies: []string{"dev/eg"},
				Rules: []Match{{Peers: set("10.244.2.30/32"), Ports: []PortRange{tcp(9090, 9090)}}}}}}},
		},
		{
			name: "several policies add up; duplicate rules collapse",
			policies: []Policy{
				ingressOnly("prod", "a", *sel("app", "db"), Rule{Peers: []Peer{{PodSelector: sel("app", "web")}}, Ports: []Port{{Protocol: TCP, Port: 5432}}}),
				ingressOnly("prod", "b", *sel("tier", "back"), Rule{Peers: []Peer{{PodSelector: sel("app", "web")}}, Ports: []Port{{Protocol: TCP, Port: 5432}}},
					Rule{Peers: []Peer{{NamespaceSelector: sel("purpose", "monitoring")}}}),
			},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/a", "prod/b"},
				Rules: []Match{
					{Peers: set("10.244.1.10/32", "fd00:1::10/128"), Ports: []PortRange{tcp(5432, 5432)}},
					{Peers: set("10.244.2.30/32")},
				}}}}},
		},
		{
			name:     "allow-all rule on an isolated pod",
			policies: []Policy{ingressOnly("prod", "all", *sel("app", "db"), Rule{})},
			want:     Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/all"}, Rules: []Match{{}}}}}},
		},
		{
			name: "ports from any peer",
			policies: []Policy{ingressOnly("prod", "port-only", *sel("app", "db"),
				Rule{Ports: []Port{{Protocol: TCP, Port: 5432}}})},
			want: Ruleset{Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/port-only"},
				Rules: []Match{{Ports: []PortRange{tcp(5432, 5432)}}}}}}},
		},
		{
			name: "policy the adapter could not translate fails closed for the pods it selects",
			policies: []Policy{
				{Namespace: "prod", Name: "broken", PodSelector: *sel("app", "db"), Ingress: true, IngressRules: []Rule{{}}, Err: errors.New("bad cidr")},
				ingressOnly("prod", "ok", *sel("app", "db"), Rule{Ports: []Port{{Protocol: TCP, Port: 5432}}}),
			},
			want: Ruleset{
				Targets: []Target{{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/broken", "prod/ok"},
					Rules: []Match{{Ports: []PortRange{tcp(5432, 5432)}}}}}},
				Problems: []Problem{{Policy: "prod/broken", Err: errors.New("x"), Pods: []PodKey{db}}},
			},
		},
		{
			name: "invalid policy with unknown types fails closed both ways",
			policies: []Policy{
				{Namespace: "dev", Name: "broken", PodSelector: Selector{}, Err: errors.New("bad")},
			},
			want: Ruleset{
				Targets:  []Target{{Pod: tool, IPs: toolIPs, Ingress: &Allow{Policies: []string{"dev/broken"}}, Egress: &Allow{Policies: []string{"dev/broken"}}}},
				Problems: []Problem{{Policy: "dev/broken", Err: errors.New("x"), Pods: []PodKey{tool}}},
			},
		},
		{
			name: "invalid podSelector fails closed for the whole namespace",
			policies: []Policy{ingressOnly("prod", "badsel",
				Selector{MatchLabels: map[string]string{"app": "web"}, Expressions: []Requirement{{Key: "x", Operator: "Near"}}}, Rule{})},
			want: Ruleset{
				Targets: []Target{
					{Pod: db, IPs: dbIPs, Ingress: &Allow{Policies: []string{"prod/badsel"}}},
					{Pod: web, IPs: webIPs, Ingress: &Allow{Policies: []string{"prod/badsel"}}},
				},
				Problems: []Problem{{Policy: "prod/badsel", Err: errors.New("x"), Pods: []PodKey{db, web}}},
			},
		},
		{
			name: "invalid peer selector makes the whole policy fail closed",
			policies: []Policy{egressOnly("prod", "badpeer", *sel("app", "web"),
				Rule{Peers: []Peer{{PodSelector: &Selector{Expressions: []Requirement{{Key: "a", Operator: OpIn}}}}}},
				Rule{})},
			want: Ruleset{
				Targets:  []Target{{Pod: web, IPs: webIPs, Egress: &Allow{Policies: []string{"prod/badpeer"}}}},
				Problems: []Problem{{Policy: "prod/badpeer", Err: errors.New("x"), Pods: []PodKey{web}}},
			},
		},
		{
			name:     "invalid policy selecting no local pod is not this node's problem",
			policies: []Policy{{Namespace: "mon", Name: "broken", Ingress: true, Err: errors.New("bad")}},
			want:     Ruleset{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := fixture()
			in.Policies = tt.policies
			got := Compile(in)
			for _, p := range got.Problems {
				if p.Err == nil {
					t.Errorf("problem %s without error", p.Policy)
				}
			}
			cmpRuleset(t, tt.want, got)
		})
	}
}

func TestCompileValidationErrorsAreInvalid(t *testing.T) {
	bad := []Policy{
		ingressOnly("prod", "a", Selector{Expressions: []Requirement{{Key: "k", Operator: OpExists, Values: []string{"v"}}}}),
		ingressOnly("prod", "b", Selector{}, Rule{Peers: []Peer{{}}}),
		ingressOnly("prod", "c", Selector{}, Rule{Peers: []Peer{{PodSelector: &Selector{}, IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}}}),
		ingressOnly("prod", "d", Selector{}, Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: pfx("11.0.0.0/16")}}}}),
		ingressOnly("prod", "e", Selector{}, Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: pfx("10.0.0.0/8")}}}}),
		ingressOnly("prod", "f", Selector{}, Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("::ffff:10.0.0.0/104")}}}}),
		ingressOnly("prod", "g", Selector{}, Rule{Ports: []Port{{Protocol: TCP, Port: 90, EndPort: 80}}}),
		ingressOnly("prod", "h", Selector{}, Rule{Ports: []Port{{Protocol: TCP, Name: "http", EndPort: 80}}}),
		ingressOnly("prod", "i", Selector{}, Rule{Ports: []Port{{Protocol: 1, Port: 80}}}),
		ingressOnly("prod", "j", Selector{}, Rule{Ports: []Port{{Protocol: TCP, EndPort: 80}}}),
		ingressOnly("prod", "k", Selector{}, Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: pfx("fd00::/8")}}}}),
	}
	for _, p := range bad {
		if err := p.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", p.Name, err)
		}
	}
	good := ingressOnly("prod", "ok", *sel("a", "b"), Rule{Peers: []Peer{{PodSelector: &Selector{}, NamespaceSelector: &Selector{}}},
		Ports: []Port{{Protocol: SCTP, Port: 1, EndPort: 65535}, {Protocol: UDP, Name: "dns"}}})
	if err := good.Validate(); err != nil {
		t.Errorf("valid policy: %v", err)
	}
}

func TestCompileAddressConflictFailsClosed(t *testing.T) {
	in := fixture()
	// A stale copy of prod/db (say, its old incarnation) still shows the
	// address of dev/tool.
	in.Pods = append(in.Pods, Pod{Namespace: "dev", Name: "stale", Node: local, IPs: ips("10.244.1.20")})
	in.Policies = []Policy{ingressOnly("dev", "deny", *sel("app", "tool"))}
	got := Compile(in)
	want := Ruleset{
		Targets:   []Target{{Pod: PodKey{Name: "conflict-10.244.1.20"}, IPs: ips("10.244.1.20"), Ingress: &Allow{Policies: []string{"dev/deny"}}}},
		Conflicts: ips("10.244.1.20"),
	}
	cmpRuleset(t, want, got)
}

func TestCompileInternsEqualSets(t *testing.T) {
	in := fixture()
	in.Policies = []Policy{
		ingressOnly("prod", "a", *sel("app", "db"), Rule{Peers: []Peer{{PodSelector: sel("app", "web")}}}),
		egressOnly("prod", "b", *sel("app", "web"), Rule{Peers: []Peer{{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("10.244.1.10/32")}},
			{IPBlock: &IPBlock{CIDR: netip.MustParsePrefix("fd00:1::10/128")}}}}),
	}
	got := Compile(in)
	if len(got.Targets) != 2 {
		t.Fatalf("targets: %+v", got.Targets)
	}
	a, b := got.Targets[0].Ingress.Rules[0].Peers, got.Targets[1].Egress.Rules[0].Peers
	if a != b {
		t.Errorf("equal address sets from a selector and from ipBlocks are not shared: %p %p", a, b)
	}
	again := Compile(in)
	if id := again.Targets[0].Ingress.Rules[0].Peers.ID; id != a.ID || id == "" {
		t.Errorf("set ID not stable across compiles: %q vs %q", id, a.ID)
	}
	in.Pods[0].IPs = ips("10.244.1.99")
	if id := Compile(in).Targets[0].Ingress.Rules[0].Peers.ID; id == a.ID {
		t.Errorf("set ID did not change with its content")
	}
}

func TestCompileSharesAllowBetweenPods(t *testing.T) {
	in := fixture()
	in.Policies = []Policy{
		ingressOnly("prod", "deny", Selector{}),
		egressOnly("prod", "eg", Selector{}, Rule{Peers: []Peer{{PodSelector: sel("app", "api")}}}),
		ingressOnly("dev", "named", Selector{}, Rule{Ports: []Port{{Protocol: TCP, Name: "http"}}}),
	}
	got := Compile(in)
	if len(got.Targets) != 3 {
		t.Fatalf("targets %+v", got.Targets)
	}
	dbT, webT := got.Targets[1], got.Targets[2]
	if dbT.Ingress != webT.Ingress || dbT.Egress != webT.Egress {
		t.Errorf("pods isolated by the same policies do not share their rules")
	}
	// Named ingress ports resolve per pod: no sharing (checked by content
	// in TestCompile); here only that the policy still isolates.
	if got.Targets[0].Ingress == nil || got.Targets[0].Ingress.Rules != nil {
		t.Errorf("dev/tool has no http port: isolated without rules, got %+v", got.Targets[0].Ingress)
	}
}
