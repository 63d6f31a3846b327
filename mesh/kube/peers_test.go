package kube

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/mesh"
)

func peerObject(name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
		"metadata": map[string]any{"name": name, "uid": "uid-" + name, "generation": int64(2)},
		"spec":     spec,
	}}
	u.SetCreationTimestamp(metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)))
	return u
}

// startPeerSource runs a Source over fake clients: the Peer CRD is served
// when crd is set.
func startPeerSource(t *testing.T, crd bool, objs ...runtime.Object) (*Source, *dynfake.FakeDynamicClient) {
	t.Helper()
	client := fake.NewClientset(kubeNode(1))
	if crd {
		client.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{{
			GroupVersion: PeerGVR.GroupVersion().String(),
			APIResources: []metav1.APIResource{{Name: "peers", Kind: "Peer"}},
		}}
	}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{PeerGVR: "PeerList"}, objs...)
	s, err := New(Config{Client: client, NodeName: "n0", Dynamic: dyn})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	// Bound: the fakes answer at once; 10 s is for a loaded machine.
	deadline := time.Now().Add(10 * time.Second)
	for !s.HasSynced() {
		if time.Now().After(deadline) {
			t.Fatal("source never synced")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s, dyn
}

func TestPeersWithoutCRD(t *testing.T) {
	s, _ := startPeerSource(t, false)
	peers, err := s.ExternalPeers()
	if err != nil || len(peers) != 0 {
		t.Fatalf("ExternalPeers = %v, %v; want none", peers, err)
	}
}

func TestPeersListAndReport(t *testing.T) {
	s, dyn := startPeerSource(t, true,
		peerObject("laptop", map[string]any{"publicKey": key(50).String(), "allowedIPs": []any{"10.244.250.1/32"},
			"endpoint": "192.0.2.7:51820", "persistentKeepalive": int64(25)}),
		peerObject("broken", map[string]any{"publicKey": int64(7), "allowedIPs": "not-a-list"}),
	)
	peers, err := s.ExternalPeers()
	if err != nil {
		t.Fatal(err)
	}
	ka := int64(25)
	created := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	want := []mesh.RawExternalPeer{
		{Name: "broken", UID: "uid-broken", Generation: 2, Created: created},
		{Name: "laptop", UID: "uid-laptop", Generation: 2, Created: created, PublicKey: key(50).String(),
			AllowedIPs: []string{"10.244.250.1/32"}, Endpoint: "192.0.2.7:51820", Keepalive: &ka},
	}
	if diff := cmp.Diff(want, peers); diff != "" {
		t.Fatalf("ExternalPeers (-want +got):\n%s", diff)
	}

	// A refusal and an acceptance read back as they were written.
	ctx := context.Background()
	for _, st := range []mesh.PeerStatus{
		{Accepted: "False", Reason: string(mesh.ReasonOverlapsPodCIDR), Message: "allowed IP overlaps", ObservedGeneration: 2},
		{Accepted: "True", ObservedGeneration: 2},
	} {
		if err := s.ReportPeer(ctx, peers[1], st); err != nil {
			t.Fatal(err)
		}
		u, err := dyn.Resource(PeerGVR).Get(ctx, "laptop", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := RawExternalPeer(u).Status; got != st {
			t.Errorf("status read back %+v, want %+v", got, st)
		}
	}
}

func TestMeshReason(t *testing.T) {
	for _, r := range []mesh.Reason{mesh.ReasonOverlapsPodCIDR, mesh.ReasonBadPublicKey, mesh.ReasonOverlapsExternalPeer, mesh.ReasonNoAllowedIPs} {
		if got := meshReason(EventReason(string(r))); got != string(r) {
			t.Errorf("meshReason(EventReason(%q)) = %q", r, got)
		}
	}
}
