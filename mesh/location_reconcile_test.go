package mesh_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestReconcileLocation: the agent publishes its InternalIP as the private
// endpoint once its Node has a location (never before), keeps the public
// endpoint as it was (here an override), and dials a location-mate at its
// private endpoint, switching to the public one when the locations part.
func TestReconcileLocation(t *testing.T) {
	self := selfNode()
	peer := node(1)
	peer.Labels = map[string]string{mesh.LabelZone: "a"}
	peer.Annotations[mesh.AnnotationPrivateEndpoint] = "203.0.113.11:51820"
	f := newFixture(t, func(c *mesh.Config) { c.EndpointOverride = "192.0.2.10:51820" }, self, peer)

	f.reconcile(t)
	if diff := cmp.Diff([]map[string]string{
		{mesh.AnnotationPublicKey: key(100).String(), mesh.AnnotationEndpoint: "192.0.2.10:51820"},
	}, f.src.Published()); diff != "" {
		t.Errorf("published without a location (-want +got):\n%s", diff)
	}
	if got := f.peers(t)[1]; got != "198.51.100.11:51820 25s 10.244.1.0/24" {
		t.Errorf("peer without a location of our own: %s", got)
	}

	self, _ = rawNamed(f.src, "n0")
	self.Labels = map[string]string{mesh.LabelZone: "a"}
	f.src.Upsert(self)
	f.reconcile(t)
	if p := f.src.Published(); len(p) != 2 || !cmp.Equal(p[1], map[string]string{mesh.AnnotationPrivateEndpoint: "198.51.100.10:51820"}) {
		t.Errorf("published after the location appeared: %v", p)
	}
	if got := f.peers(t)[1]; got != "203.0.113.11:51820 25s 10.244.1.0/24" {
		t.Errorf("location-mate: %s, want its private endpoint", got)
	}

	self, _ = rawNamed(f.src, "n0")
	self.Labels = map[string]string{mesh.LabelZone: "b"}
	f.src.Upsert(self)
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.11:51820 25s 10.244.1.0/24" {
		t.Errorf("peer in another location: %s, want its public endpoint", got)
	}
}
