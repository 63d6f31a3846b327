package kube

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

// Pod translates a Pod. It reports false for pods that no longer hold
// their addresses (Succeeded or Failed: the IPs may already be reused).
// Bad addresses are skipped: a pod with none is simply not a peer yet.
func Pod(p *v1.Pod) (policy.Pod, bool) {
	if p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
		return policy.Pod{}, false
	}
	out := policy.Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		Labels:      p.Labels,
		Node:        p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []v1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && !a.Is4In6() && a.Zone() == "" {
			out.IPs = append(out.IPs, a)
		}
	}
	containers := p.Spec.Containers
	for _, c := range p.Spec.InitContainers {
		// Sidecars (restartable init containers) serve ports too.
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	for _, c := range containers {
		for _, cp := range c.Ports {
			proto, err := policy.ParseProtocol(string(cp.Protocol))
			if err != nil || cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			out.Ports = append(out.Ports, policy.ContainerPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	return out, true
}

// Namespace translates a Namespace.
func Namespace(ns *v1.Namespace) policy.Namespace {
	return policy.Namespace{Name: ns.Name, Labels: ns.Labels}
}

// Policy translates a NetworkPolicy. Whatever cannot be expressed sets
// Err (the compiler then fails closed for the pods it selects); the
// policy's selector and types are kept when they could be read, so that
// failing closed hits exactly the pods and directions the policy names.
func Policy(np *networkingv1.NetworkPolicy) policy.Policy {
	out := policy.Policy{Namespace: np.Namespace, Name: np.Name}
	var errs []error
	sel, err := selector(&np.Spec.PodSelector)
	if err != nil {
		errs = append(errs, fmt.Errorf("podSelector: %w", err))
	}
	out.PodSelector = sel

	if len(np.Spec.PolicyTypes) == 0 {
		// The API server's defaulting, for objects that skipped it.
		out.Ingress = true
		out.Egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			out.Ingress = true
		case networkingv1.PolicyTypeEgress:
			out.Egress = true
		default:
			errs = append(errs, fmt.Errorf("policyType %q: %w", t, policy.ErrInvalid))
			out.Ingress, out.Egress = true, true
		}
	}
	for i, r := range np.Spec.Ingress {
		rule, err := rule(r.From, r.Ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("ingress[%d]: %w", i, err))
		}
		out.IngressRules = append(out.IngressRules, rule)
	}
	for i, r := range np.Spec.Egress {
		rule, err := rule(r.To, r.Ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("egress[%d]: %w", i, err))
		}
		out.EgressRules = append(out.EgressRules, rule)
	}
	if err := errors.Join(errs...); err != nil {
		out.Err = err
	} else if err := out.Validate(); err != nil {
		out.Err = err
	}
	return out
}

func rule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (policy.Rule, error) {
	var out policy.Rule
	var errs []error
	for i, p := range peers {
		var peer policy.Peer
		if p.PodSelector != nil {
			s, err := selector(p.PodSelector)
			if err != nil {
				errs = append(errs, fmt.Errorf("from/to[%d].podSelector: %w", i, err))
			}
			peer.PodSelector = &s
		}
		if p.NamespaceSelector != nil {
			s, err := selector(p.NamespaceSelector)
			if err != nil {
				errs = append(errs, fmt.Errorf("from/to[%d].namespaceSelector: %w", i, err))
			}
			peer.NamespaceSelector = &s
		}
		if p.IPBlock != nil {
			b, err := ipBlock(p.IPBlock)
			if err != nil {
				errs = append(errs, fmt.Errorf("from/to[%d].ipBlock: %w", i, err))
			}
			peer.IPBlock = &b
		}
		out.Peers = append(out.Peers, peer)
	}
	for i, p := range ports {
		port, err := portOf(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("ports[%d]: %w", i, err))
			continue
		}
		out.Ports = append(out.Ports, port)
	}
	return out, errors.Join(errs...)
}

func selector(s *metav1.LabelSelector) (policy.Selector, error) {
	out := policy.Selector{MatchLabels: s.MatchLabels}
	for _, e := range s.MatchExpressions {
		out.Expressions = append(out.Expressions, policy.Requirement{
			Key: e.Key, Operator: policy.Operator(e.Operator), Values: e.Values,
		})
	}
	return out, out.Validate()
}

// ipBlock parses the CIDRs. Legacy objects may carry host bits
// ("10.0.0.1/8"): the API has always read those as the network, and so do
// we. Forms netip rejects (leading zeros, which older API servers read in
// a way we cannot be sure of) fail closed.
func ipBlock(b *networkingv1.IPBlock) (policy.IPBlock, error) {
	var out policy.IPBlock
	p, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		return out, fmt.Errorf("cidr %q: %w", b.CIDR, policy.ErrInvalid)
	}
	out.CIDR = p.Masked()
	for _, e := range b.Except {
		q, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			return out, fmt.Errorf("except %q: %w", e, policy.ErrInvalid)
		}
		out.Except = append(out.Except, q.Masked())
	}
	return out, nil
}

func portOf(p networkingv1.NetworkPolicyPort) (policy.Port, error) {
	var out policy.Port
	proto := ""
	if p.Protocol != nil {
		proto = string(*p.Protocol)
	}
	var err error
	if out.Protocol, err = policy.ParseProtocol(proto); err != nil {
		return out, err
	}
	if p.Port != nil {
		switch p.Port.Type {
		case intstr.Int:
			if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
				return out, fmt.Errorf("port %d: %w", p.Port.IntVal, policy.ErrInvalid)
			}
			out.Port = uint16(p.Port.IntVal)
		case intstr.String:
			if p.Port.StrVal == "" {
				return out, fmt.Errorf("empty port name: %w", policy.ErrInvalid)
			}
			out.Name = p.Port.StrVal
		}
	}
	if p.EndPort != nil {
		if *p.EndPort < 1 || *p.EndPort > 65535 {
			return out, fmt.Errorf("endPort %d: %w", *p.EndPort, policy.ErrInvalid)
		}
		out.EndPort = uint16(*p.EndPort)
	}
	return out, nil
}
