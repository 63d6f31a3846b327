package kube

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

func ptr[T any](v T) *T { return &v }

var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
	cmpopts.IgnoreFields(policy.Policy{}, "Err"),
}

func TestPolicyTranslation(t *testing.T) {
	udp, sctp := v1.ProtocolUDP, v1.ProtocolSCTP
	tests := []struct {
		name    string
		spec    networkingv1.NetworkPolicySpec
		want    policy.Policy
		invalid bool
	}{
		{
			name: "no policyTypes: Ingress, plus Egress when there are egress rules",
			spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
			want: policy.Policy{Ingress: true, Egress: true, EgressRules: []policy.Rule{{}}},
		},
		{
			name: "no policyTypes and no egress rules: Ingress only",
			spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
			want: policy.Policy{Ingress: true, PodSelector: policy.Selector{MatchLabels: map[string]string{"app": "db"}}},
		},
		{
			name: "explicit Egress only",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}},
			want: policy.Policy{Egress: true},
		},
		{
			name: "peers: selectors, both combined, ipBlock (host bits masked as the API reads them)",
			spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}}},
					{NamespaceSelector: &metav1.LabelSelector{}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "x"}}, PodSelector: &metav1.LabelSelector{}},
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.1/8", Except: []string{"10.1.0.0/16"}}},
				}}},
			},
			want: policy.Policy{Ingress: true, IngressRules: []policy.Rule{{Peers: []policy.Peer{
				{PodSelector: &policy.Selector{Expressions: []policy.Requirement{{Key: "tier", Operator: policy.OpIn, Values: []string{"a", "b"}}}}},
				{NamespaceSelector: &policy.Selector{}},
				{NamespaceSelector: &policy.Selector{MatchLabels: map[string]string{"team": "x"}}, PodSelector: &policy.Selector{}},
				{IPBlock: &policy.IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}},
			}}}},
		},
		{
			name: "ports: default TCP, UDP, SCTP, named, endPort, protocol only",
			spec: networkingv1.NetworkPolicySpec{
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
					{Port: ptr(intstr.FromInt32(80))},
					{Protocol: &udp, Port: ptr(intstr.FromString("dns"))},
					{Protocol: &sctp, Port: ptr(intstr.FromInt32(3868)), EndPort: ptr(int32(3870))},
					{Protocol: &udp},
				}}},
			},
			want: policy.Policy{Ingress: true, IngressRules: []policy.Rule{{Ports: []policy.Port{
				{Protocol: policy.TCP, Port: 80},
				{Protocol: policy.UDP, Name: "dns"},
				{Protocol: policy.SCTP, Port: 3868, EndPort: 3870},
				{Protocol: policy.UDP},
			}}}},
		},
		{
			name: "cidr with leading zeros fails closed, keeping selector and types",
			spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "010.0.0.0/8"}}}}},
			},
			want: policy.Policy{Egress: true, PodSelector: policy.Selector{MatchLabels: map[string]string{"app": "db"}},
				EgressRules: []policy.Rule{{Peers: []policy.Peer{{IPBlock: &policy.IPBlock{}}}}}},
			invalid: true,
		},
		{
			name: "IPv4-mapped IPv6 cidr fails closed",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "::ffff:10.0.0.0/104"}}}}}},
			want: policy.Policy{Ingress: true, IngressRules: []policy.Rule{{Peers: []policy.Peer{
				{IPBlock: &policy.IPBlock{CIDR: netip.MustParsePrefix("::ffff:10.0.0.0/104")}}}}}},
			invalid: true,
		},
		{
			name: "unknown protocol fails closed",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: ptr(v1.Protocol("ICMP"))}}}}},
			want:    policy.Policy{Ingress: true, IngressRules: []policy.Rule{{}}},
			invalid: true,
		},
		{
			name: "unknown policyType fails closed both ways",
			spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Sideways"}},
			want: policy.Policy{Ingress: true, Egress: true}, invalid: true,
		},
		{
			name: "bad selector operator fails closed",
			spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}},
			want: policy.Policy{Ingress: true, PodSelector: policy.Selector{Expressions: []policy.Requirement{{Key: "a", Operator: "Near"}}}}, invalid: true,
		},
		{
			name: "endPort with a named port fails closed",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Port: ptr(intstr.FromString("http")), EndPort: ptr(int32(90))}}}}},
			want: policy.Policy{Ingress: true, IngressRules: []policy.Rule{{Ports: []policy.Port{{Protocol: policy.TCP, Name: "http", EndPort: 90}}}}}, invalid: true,
		},
		{
			name: "port out of range fails closed",
			spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Port: ptr(intstr.FromInt32(70000))}}}}},
			want: policy.Policy{Ingress: true, IngressRules: []policy.Rule{{}}}, invalid: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "np"}, Spec: tt.spec}
			got := Policy(np)
			tt.want.Namespace, tt.want.Name = "ns", "np"
			if d := cmp.Diff(tt.want, got, cmpOpts); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if tt.invalid != (got.Err != nil) {
				t.Errorf("Err = %v, want invalid=%v", got.Err, tt.invalid)
			}
			if got.Err != nil && !errors.Is(got.Err, policy.ErrInvalid) {
				t.Errorf("Err %v does not wrap policy.ErrInvalid", got.Err)
			}
		})
	}
}

func TestPodTranslation(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "x"}},
		Spec: v1.PodSpec{
			NodeName: "n1",
			Containers: []v1.Container{{Ports: []v1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{Name: "dns", ContainerPort: 53, Protocol: v1.ProtocolUDP},
				{ContainerPort: 9000}, // unnamed: nothing to resolve
			}}},
			InitContainers: []v1.Container{
				{Ports: []v1.ContainerPort{{Name: "sidecar", ContainerPort: 15001}}, RestartPolicy: &always},
				{Ports: []v1.ContainerPort{{Name: "init", ContainerPort: 1}}},
			},
		},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIPs: []v1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}, {IP: "bogus"}}},
	}
	got, ok := Pod(p)
	want := policy.Pod{Namespace: "ns", Name: "p", Labels: map[string]string{"app": "x"}, Node: "n1",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00::5")},
		Ports: []policy.ContainerPort{{Name: "http", Protocol: policy.TCP, Port: 8080}, {Name: "dns", Protocol: policy.UDP, Port: 53},
			{Name: "sidecar", Protocol: policy.TCP, Port: 15001}}}
	if !ok {
		t.Fatal("running pod dropped")
	}
	if d := cmp.Diff(want, got, cmpOpts); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	p.Status.PodIPs = nil
	p.Status.PodIP = "10.244.1.6"
	if got, _ := Pod(p); len(got.IPs) != 1 || got.IPs[0] != netip.MustParseAddr("10.244.1.6") {
		t.Errorf("status.podIP fallback: %v", got.IPs)
	}
	for _, phase := range []v1.PodPhase{v1.PodSucceeded, v1.PodFailed} {
		p.Status.Phase = phase
		if _, ok := Pod(p); ok {
			t.Errorf("%s pod kept: its address may belong to another pod", phase)
		}
	}
}
