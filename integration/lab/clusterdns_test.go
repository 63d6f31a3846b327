package lab

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/net/dns/dnsmessage"
)

func TestClusterDNSAnswer(t *testing.T) {
	svcs := map[string]*v1.Service{
		"ns1/web":  {Spec: v1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20", "fd00:10:96::20"}}},
		"ns1/hl":   {Spec: v1.ServiceSpec{ClusterIP: v1.ClusterIPNone}},
		"ns1/ext":  {Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "web.ns1.svc.cluster.local"}},
		"ns1/out":  {Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.invalid"}},
		"ns1/loop": {Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "loop.ns1.svc.cluster.local"}},
	}
	d := NewClusterDNS(ClusterDNSConfig{Domain: "cluster.local"})
	d.lookup = func(ns, name string) (*v1.Service, []netip.Addr, error) {
		s := svcs[ns+"/"+name]
		if s == nil {
			return nil, nil, nil
		}
		if name == "hl" {
			f, tr := false, true
			return s, endpointAddrs([]*discoveryv1.EndpointSlice{{
				ObjectMeta: metav1.ObjectMeta{Name: "hl-1"},
				Endpoints: []discoveryv1.Endpoint{
					{Addresses: []string{"10.244.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &tr}},
					{Addresses: []string{"10.244.2.7"}},
					{Addresses: []string{"10.244.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &f}},
				},
			}}, s.Spec.PublishNotReadyAddresses), nil
		}
		return s, nil, nil
	}
	tests := []struct {
		name  string
		qtype dnsmessage.Type
		rcode dnsmessage.RCode
		want  []string
	}{
		{"web.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"A 10.96.0.20"}},
		{"WEB.ns1.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, []string{"AAAA fd00:10:96::20"}},
		{"hl.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"A 10.244.1.5", "A 10.244.2.7"}},
		{"hl.ns1.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, nil},
		{"ext.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"CNAME web.ns1.svc.cluster.local.", "A 10.96.0.20"}},
		{"out.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"CNAME example.invalid."}},
		{"loop.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []string{"CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local.", "CNAME loop.ns1.svc.cluster.local."}},
		{"nope.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"web.ns1.svc.cluster.local.ns1.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.qtype.String(), func(t *testing.T) {
			q := dnsmessage.Question{Name: dnsmessage.MustNewName(tt.name), Type: tt.qtype, Class: dnsmessage.ClassINET}
			msg, err := build(dnsmessage.Header{ID: 42, RecursionDesired: true}, q, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp := d.answer(msg, 512)
			var m dnsmessage.Message
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("unpack response: %v", err)
			}
			if m.ID != 42 || !m.Response || m.RCode != tt.rcode {
				t.Errorf("header: id %d response %v rcode %v, want 42 true %v", m.ID, m.Response, m.RCode, tt.rcode)
			}
			var got []string
			for _, a := range m.Answers {
				switch b := a.Body.(type) {
				case *dnsmessage.AResource:
					got = append(got, "A "+netip.AddrFrom4(b.A).String())
				case *dnsmessage.AAAAResource:
					got = append(got, "AAAA "+netip.AddrFrom16(b.AAAA).String())
				case *dnsmessage.CNAMEResource:
					got = append(got, "CNAME "+b.CNAME.String())
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("answers (-want +got):\n%s", diff)
			}
		})
	}
}
