package mesh_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestReconcileParsesEachNodeOnce: a pass parses every Node exactly once,
// peers, broken nodes and our own alike, although the resolver, the own
// object and Compute all read the list.
func TestReconcileParsesEachNodeOnce(t *testing.T) {
	res := &resolver{answers: map[string][]netip.Addr{"wg1.example.org": {netip.MustParseAddr("198.51.100.71")}}}
	self := selfNode()
	self.Annotations = map[string]string{mesh.AnnotationKeepalive: "15"}
	n1 := node(1)
	n1.Annotations[mesh.AnnotationEndpoint] = "wg1.example.org:51820"
	bad := node(3)
	bad.Annotations[mesh.AnnotationPublicKey] = "not-a-key"
	f := newFixture(t, func(c *mesh.Config) { c.Resolver = res }, self, n1, node(2), bad)

	counts := mesh.CountParses(t)
	for pass := 1; pass <= 2; pass++ {
		clear(counts)
		f.reconcile(t)
		if diff := cmp.Diff(map[string]int{"n0": 1, "n1": 1, "n2": 1, "n3": 1}, counts); diff != "" {
			t.Errorf("pass %d: parses per Node (-want +got):\n%s", pass, diff)
		}
	}
	// The one parse fed every reader: the DNS name resolved, our own
	// keepalive applied, the broken node excluded.
	if diff := cmp.Diff(map[byte]string{
		1: "198.51.100.71:51820 15s 10.244.1.0/24",
		2: "198.51.100.12:51820 15s 10.244.2.0/24",
	}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	if st := f.r.Status(); len(st.Excluded) != 1 || st.Excluded[0].Node != "n3" || st.Excluded[0].Reason != mesh.ReasonBadPublicKey {
		t.Errorf("excluded = %+v, want n3 with %s", st.Excluded, mesh.ReasonBadPublicKey)
	}
}

func TestParseNodes(t *testing.T) {
	ownBad := mesh.RawNode{Name: "n0", PodCIDRs: []string{"10.244.0.5/24"},
		Annotations: map[string]string{mesh.AnnotationKeepalive: "soon"}}
	ownGood := selfNode()
	ownGood.Annotations = map[string]string{mesh.AnnotationKeepalive: "15s"}
	bad := node(3)
	bad.Annotations[mesh.AnnotationPublicKey] = "not-a-key"

	l := mesh.ParseNodes([]mesh.RawNode{node(2), ownBad, bad, ownGood, node(1)}, "n0")
	if l.SelfName != "n0" {
		t.Errorf("SelfName = %q", l.SelfName)
	}
	var names []string
	for _, n := range l.Nodes {
		names = append(names, n.Name)
	}
	if diff := cmp.Diff([]string{"n2", "n1"}, names); diff != "" {
		t.Errorf("nodes, in list order (-want +got):\n%s", diff)
	}
	if len(l.Invalid) != 1 || l.Invalid[0].Node != "n3" || l.Invalid[0].Reason != mesh.ReasonBadPublicKey || l.Invalid[0].Err == nil {
		t.Errorf("invalid = %+v, want n3 with %s", l.Invalid, mesh.ReasonBadPublicKey)
	}
	// The first own entry counts; its problems are kept, not fatal.
	switch o := l.Own; {
	case o == nil:
		t.Fatal("own entry missing")
	case o.Raw.PodCIDRs[0] != "10.244.0.5/24":
		t.Errorf("own entry is %+v, want the first one listed", o.Raw)
	case o.PodCIDRsErr == nil || o.PodCIDRs != nil:
		t.Errorf("own pod CIDRs = %v, %v; want an error", o.PodCIDRs, o.PodCIDRsErr)
	case o.KeepaliveErr == nil || o.Keepalive != nil:
		t.Errorf("own keepalive = %v, %v; want an error", o.Keepalive, o.KeepaliveErr)
	}
	if s := l.Self(key(100)); s.Name != "n0" || s.PublicKey != key(100) || s.PodCIDRs != nil || s.Keepalive != nil {
		t.Errorf("Self = %+v, want name and key only", s)
	}

	good := mesh.ParseNodes([]mesh.RawNode{ownGood}, "n0")
	s := good.Self(key(100))
	if diff := cmp.Diff(pfx("10.244.0.0/24"), s.PodCIDRs, cmpNet); diff != "" || s.Keepalive == nil || *s.Keepalive != 15*time.Second {
		t.Errorf("Self = %+v (pod CIDRs -want +got:\n%s), want keepalive 15s", s, diff)
	}
	if none := mesh.ParseNodes([]mesh.RawNode{node(1)}, "n0"); none.Own != nil {
		t.Errorf("own entry %+v for an unlisted Node", none.Own)
	}
}

// TestComputeParsedMatchesRaw: Compute decides the same from a parsed list
// as from the raw one it was parsed from.
func TestComputeParsedMatchesRaw(t *testing.T) {
	twin := node(4)
	twin.Annotations[mesh.AnnotationPublicKey] = key(1).String()
	bad := node(3)
	bad.Annotations[mesh.AnnotationPublicKey] = "not-a-key"
	dns := node(5)
	dns.Annotations[mesh.AnnotationEndpoint] = "gone.example.org:51820"
	raws := []mesh.RawNode{node(2), selfNode(), bad, node(1), twin, dns}
	self := mesh.Self{Name: "n0", PublicKey: key(100), PodCIDRs: pfx("10.244.0.0/24")}

	fromRaw := mesh.Compute(mesh.Input{Self: self, Nodes: raws, DefaultKeepalive: 25 * time.Second})
	list := mesh.ParseNodes(raws, "n0")
	fromList := mesh.Compute(mesh.Input{Self: self, Parsed: &list, DefaultKeepalive: 25 * time.Second})
	// Rendered with %+v: the exclusions' errors compare by their text.
	if got, want := fmt.Sprintf("%+v", fromList), fmt.Sprintf("%+v", fromRaw); got != want {
		t.Errorf("from the parsed list:\n%s\nfrom the raw list:\n%s", got, want)
	}
	if len(fromRaw.Peers) != 3 || len(fromRaw.Excluded) != 2 || len(fromRaw.Degraded) != 1 {
		t.Errorf("fixture lost its point: %+v", fromRaw)
	}
}
