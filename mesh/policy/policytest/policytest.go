// Package policytest builds synthetic clusters for benchmarks and tests of
// the policy engine: deterministic, so numbers are comparable run to run.
package policytest

import (
	"fmt"
	"net/netip"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

// Shape sizes a synthetic cluster.
type Shape struct {
	Pods, Policies, Nodes, Namespaces int
	// LocalNode is the node the ruleset is compiled for ("node-0").
	LocalNode string
}

// Cluster returns pods spread round-robin over nodes and namespaces (each
// pod with app/tier labels and two named ports), namespaces with team
// labels, and policies mixing every feature: pod and namespace selectors,
// both combined, ipBlocks with exceptions, numeric and named ports, port
// ranges, egress rules and default-deny policies.
func Cluster(s Shape) policy.Input {
	if s.Nodes < 1 {
		s.Nodes = 1
	}
	if s.Namespaces < 1 {
		s.Namespaces = 1
	}
	in := policy.Input{Node: "node-0"}
	for i := range s.Namespaces {
		in.Namespaces = append(in.Namespaces, policy.Namespace{Name: ns(i), Labels: map[string]string{
			"kubernetes.io/metadata.name": ns(i), "team": fmt.Sprintf("t%d", i%5), "env": []string{"prod", "dev"}[i%2],
		}})
	}
	for i := range s.Pods {
		node := i % s.Nodes
		in.Pods = append(in.Pods, policy.Pod{
			// i/Nodes, not i: every node gets pods of every namespace.
			Namespace: ns(i / s.Nodes % s.Namespaces),
			Name:      fmt.Sprintf("pod-%d", i),
			Node:      fmt.Sprintf("node-%d", node),
			Labels:    map[string]string{"app": fmt.Sprintf("app%d", i%17), "tier": []string{"front", "back", "cache"}[i%3]},
			IPs:       []netip.Addr{podIP(node, i/s.Nodes)},
			Ports: []policy.ContainerPort{
				{Name: "http", Protocol: policy.TCP, Port: uint16(8000 + i%7)},
				{Name: "metrics", Protocol: policy.TCP, Port: 9090},
			},
		})
	}
	for i := range s.Policies {
		p := policy.Policy{
			Namespace:   ns(i / 5 % s.Namespaces),
			Name:        fmt.Sprintf("np-%d", i),
			PodSelector: policy.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", i%17)}},
			Ingress:     true,
		}
		switch i % 5 {
		case 0: // default deny for the namespace
			p.PodSelector = policy.Selector{}
		case 1: // from pods of the same namespace, named port
			p.IngressRules = []policy.Rule{{
				Peers: []policy.Peer{{PodSelector: &policy.Selector{MatchLabels: map[string]string{"tier": "front"}}},
					{PodSelector: &policy.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i+1)%17)}}}},
				Ports: []policy.Port{{Protocol: policy.TCP, Name: "http"}, {Protocol: policy.TCP, Port: uint16(1000 + i)}},
			}}
		case 2: // from labelled namespaces and selected pods in them
			p.IngressRules = []policy.Rule{{
				Peers: []policy.Peer{
					{NamespaceSelector: &policy.Selector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%5)}},
						PodSelector: &policy.Selector{Expressions: []policy.Requirement{{Key: "app", Operator: policy.OpNotIn, Values: []string{fmt.Sprintf("app%d", i%17)}}}}},
					{NamespaceSelector: &policy.Selector{Expressions: []policy.Requirement{{Key: "env", Operator: policy.OpIn, Values: []string{"prod"}}}},
						PodSelector: &policy.Selector{MatchLabels: map[string]string{"tier": "back"}}},
				},
				Ports: []policy.Port{{Protocol: policy.TCP, Port: 8000, EndPort: uint16(8010 + i)}, {Protocol: policy.UDP, Port: 53}},
			}}
		case 3: // ipBlocks with exceptions, plus egress
			p.IngressRules = []policy.Rule{{Peers: []policy.Peer{{IPBlock: &policy.IPBlock{
				CIDR: netip.MustParsePrefix("192.0.2.0/24"), Except: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/30", i%64*4))},
			}}}}}
			p.Egress = true
			p.EgressRules = []policy.Rule{
				{Peers: []policy.Peer{{IPBlock: &policy.IPBlock{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Except: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}}}},
				{Peers: []policy.Peer{{NamespaceSelector: &policy.Selector{}, PodSelector: &policy.Selector{MatchLabels: map[string]string{"tier": "back", "app": fmt.Sprintf("app%d", (i+3)%17)}}}},
					Ports: []policy.Port{{Protocol: policy.TCP, Name: "http"}}},
			}
		case 4: // egress only, to monitoring on a named port
			p.Ingress = false
			p.Egress = true
			p.EgressRules = []policy.Rule{{
				Peers: []policy.Peer{{NamespaceSelector: &policy.Selector{MatchLabels: map[string]string{"env": "dev"}},
					PodSelector: &policy.Selector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (i+5)%17)}}}},
				Ports: []policy.Port{{Protocol: policy.TCP, Name: "metrics"}, {Protocol: policy.SCTP}},
			}}
		}
		in.Policies = append(in.Policies, p)
	}
	return in
}

// podIP gives node n the range 10.244.0.0 + n*1024 (a /22) so up to 1022
// pods per node have distinct addresses.
func podIP(n, i int) netip.Addr {
	v := 10<<24 | 244<<16 | n*1024 + 2 + i%1022
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ns(i int) string { return fmt.Sprintf("ns-%d", i) }
