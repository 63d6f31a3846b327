package lab

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// TestKubeletDualStackRanges: the ranges the control plane and kube-proxy
// get, IPv4 first (the kubernetes Service and spec.podCIDRs[0] stay IPv4).
func TestKubeletDualStackRanges(t *testing.T) {
	for _, tc := range []struct {
		dual            bool
		service, clustr string
	}{
		{false, "10.96.0.0/16", "10.244.0.0/16"},
		{true, "10.96.0.0/16,fd00:10:96::/112", "10.244.0.0/16,fd00:10:244::/56"},
	} {
		st := &State{DualStack: tc.dual}
		if got := serviceCIDRs(st); got != tc.service {
			t.Errorf("dual=%v: serviceCIDRs %q, want %q", tc.dual, got, tc.service)
		}
		if got := clusterCIDRs(st); got != tc.clustr {
			t.Errorf("dual=%v: clusterCIDRs %q, want %q", tc.dual, got, tc.clustr)
		}
		l := New(Config{Name: "t", StateDir: t.TempDir(), BinDir: "/bin"})
		var ranges []string
		for _, a := range l.kubeletAPIServerArgv(&State{Underlay: "wgl-t-ul", DualStack: tc.dual}) {
			if strings.HasPrefix(a, "--service-cluster-ip-range=") {
				ranges = append(ranges, a)
			}
		}
		if want := []string{"--service-cluster-ip-range=" + tc.service}; !cmp.Equal(ranges, want) {
			t.Errorf("dual=%v: apiserver ranges %v, want %v", tc.dual, ranges, want)
		}
		proxy := l.kubeProxyConfig(&Node{Name: "node1", Dir: "/x"}, "nftables", clusterCIDRs(st))
		if !strings.Contains(proxy, "\nclusterCIDR: "+tc.clustr+"\n") {
			t.Errorf("dual=%v: kube-proxy config without clusterCIDR %s:\n%s", tc.dual, tc.clustr, proxy)
		}
	}
}

// TestKubeletNodeAddresses: node IPs (--node-ip) of both families in the
// order the Node lists them, the kubelet serving on both, and the kubelet
// mode's endpoint pattern (IPv6 first everywhere, no IPv6-only nodes).
func TestKubeletNodeAddresses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		n       Node
		nodeIPs []string
		addr    string
	}{
		{"ipv4", Node{UnderlayIP: "198.51.100.11"}, []string{"198.51.100.11"}, "198.51.100.11"},
		{"dual-homed", Node{UnderlayIP: "198.51.100.11", UnderlayIPv6: "2001:db8:100::11"},
			[]string{"198.51.100.11", "2001:db8:100::11"}, "'::'"},
		{"prefers ipv6", Node{UnderlayIP: "198.51.100.12", UnderlayIPv6: "2001:db8:100::12", Underlay: UnderlayPreferIPv6},
			[]string{"2001:db8:100::12", "198.51.100.12"}, "'::'"},
	} {
		if got := tc.n.InternalIPs(); !cmp.Equal(got, tc.nodeIPs) {
			t.Errorf("%s: node IPs %v, want %v", tc.name, got, tc.nodeIPs)
		}
		if got := kubeletAddress(&tc.n); got != tc.addr {
			t.Errorf("%s: kubelet address %s, want %s", tc.name, got, tc.addr)
		}
	}
	var got []UnderlayKind
	for i := 1; i <= 4; i++ {
		got = append(got, kubeletUnderlayFor(i))
	}
	if want := []UnderlayKind{UnderlayPreferIPv6, UnderlayPreferIPv6, UnderlayPreferIPv6, UnderlayPreferIPv6}; !cmp.Equal(got, want) {
		t.Errorf("kubelet-mode endpoint pattern %v, want %v", got, want)
	}
}

// TestDualStackOverlay renders what the lab applies (kustomize, as kubectl
// apply -k does): the dual-stack overlay gives the agent both cluster
// ranges through WGMESH_CLUSTER_CIDRS and keeps the rest of the DaemonSet.
func TestDualStackOverlay(t *testing.T) {
	for _, dual := range []bool{false, true} {
		overlay, err := writeDeployFiles(t.TempDir(), dual)
		if err != nil {
			t.Fatal(err)
		}
		m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), overlay)
		if err != nil {
			t.Fatalf("dual=%v: kustomize %s: %v", dual, overlay, err)
		}
		var ds *appsv1.DaemonSet
		for _, r := range m.Resources() {
			if r.GetKind() != "DaemonSet" {
				continue
			}
			y, err := r.AsYAML()
			if err != nil {
				t.Fatal(err)
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(y, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ds = obj.(*appsv1.DaemonSet)
		}
		if ds == nil {
			t.Fatalf("dual=%v: no DaemonSet rendered", dual)
		}
		agent := ds.Spec.Template.Spec.Containers[0]
		var env []string
		for _, e := range agent.Env {
			env = append(env, e.Name+"="+e.Value)
		}
		has := slices.Contains(env, "WGMESH_CLUSTER_CIDRS=10.244.0.0/16,fd00:10:244::/56")
		if agent.Name != "agent" || has != dual {
			t.Errorf("dual=%v: container %q env %v; want WGMESH_CLUSTER_CIDRS with both ranges exactly in the dual-stack overlay", dual, agent.Name, env)
		}
		if !slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "WGMESH_NODE_NAME=") }) {
			t.Errorf("dual=%v: the patch lost WGMESH_NODE_NAME: %v", dual, env)
		}
		if agent.Image != WgmeshImage {
			t.Errorf("dual=%v: image %q, want %q", dual, agent.Image, WgmeshImage)
		}
	}
}
