package mesh_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestKeepalivePrecedence: a peer's own annotation wins, else this node's
// own annotation (a NAT'd node annotated once keeps its mapping open toward
// every peer), else the agent's default.
func TestKeepalivePrecedence(t *testing.T) {
	for _, tc := range []struct {
		name       string
		peer, self string // "" = no annotation
		def        time.Duration
		want       string
	}{
		{"default", "", "", 25 * time.Second, "25s"},
		{"default off", "", "", 0, "0s"},
		{"peer annotation wins over default", "7", "", 25 * time.Second, "7s"},
		{"peer may switch it off", "0", "", 25 * time.Second, "0s"},
		{"own annotation is the default", "", "15s", 0, "15s"},
		{"own annotation beats agent default", "", "15", 25 * time.Second, "15s"},
		{"peer annotation beats own", "9", "15", 25 * time.Second, "9s"},
		{"bad own annotation ignored", "", "soon", 25 * time.Second, "25s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self := selfNode()
			self.Annotations = map[string]string{}
			if tc.self != "" {
				self.Annotations[mesh.AnnotationKeepalive] = tc.self
			}
			n1 := node(1)
			if tc.peer != "" {
				n1.Annotations[mesh.AnnotationKeepalive] = tc.peer
			}
			f := newFixture(t, func(c *mesh.Config) { c.DefaultKeepalive = tc.def }, self, n1)
			f.reconcile(t)
			if got := f.peers(t)[1]; got != "198.51.100.11:51820 "+tc.want+" 10.244.1.0/24" {
				t.Errorf("peer = %q, want keepalive %s", got, tc.want)
			}
		})
	}
}

func TestOwnKeepaliveChangesApplyAndBadOneWarnsOnce(t *testing.T) {
	var logs strings.Builder
	self := selfNode()
	self.Annotations = map[string]string{mesh.AnnotationKeepalive: "5"}
	f := newFixture(t, func(c *mesh.Config) { c.DefaultKeepalive = 0; c.Logger = newTestLogger(&logs) }, self, node(1), node(2))
	f.reconcile(t)
	for _, k := range []byte{1, 2} {
		if !strings.Contains(f.peers(t)[k], " 5s ") {
			t.Errorf("peer %d = %q, want 5s keepalive", k, f.peers(t)[k])
		}
	}
	self, _ = nodeNamed(t, f, "n0")
	self.Annotations[mesh.AnnotationKeepalive] = "-3"
	f.src.Upsert(self)
	f.reconcile(t)
	f.reconcile(t)
	if n := strings.Count(logs.String(), "own annotation "+mesh.AnnotationKeepalive+" ignored"); n != 1 {
		t.Errorf("bad own keepalive logged %d times, want once:\n%s", n, logs.String())
	}
	if w := f.src.Warnings(); len(w) != 1 || w[0].Node != "n0" || w[0].Reason != string(mesh.ReasonBadKeepalive) {
		t.Errorf("warnings = %+v", w)
	}
	// Ignored means the agent default (0) again, not the last good value.
	if got := f.peers(t)[1]; !strings.Contains(got, " 0s ") {
		t.Errorf("peer 1 = %q, want the default 0s", got)
	}
}

func nodeNamed(t *testing.T, f *fixture, name string) (mesh.RawNode, bool) {
	t.Helper()
	nodes, err := f.src.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return mesh.RawNode{}, false
}

// TestEndpointOverrideDNS: wgmesh.io/endpoint-override (set by an operator
// on a NAT'd node) wins over the published endpoint, a DNS name in it is
// resolved through the Resolver on every pass, and a changed answer moves
// the peer even over a roamed endpoint, while an unchanged one keeps the
// roamed endpoint.
func TestEndpointOverrideDNS(t *testing.T) {
	res := &resolver{answers: map[string][]netip.Addr{"nat.example.org": {netip.MustParseAddr("198.51.100.60")}}}
	n1 := node(1)
	n1.Annotations[mesh.AnnotationEndpointOverride] = "NAT.example.org.:4500"
	f := newFixture(t, func(c *mesh.Config) { c.Resolver = res }, selfNode(), n1)
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.60:4500 25s 10.244.1.0/24" {
		t.Fatalf("peer 1 = %q, want the override's resolved address", got)
	}
	calls := res.calls

	// WireGuard roams to the NAT's actual mapping; same DNS answer on the
	// resyncs: the roamed endpoint stays.
	if err := f.dev.Roam(key(1), netipUDP("198.51.100.60:31337")); err != nil {
		t.Fatal(err)
	}
	f.dev.ResetConfigs()
	f.reconcile(t)
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("roamed endpoint overwritten: %+v", c)
	}
	if res.calls != calls+2 {
		t.Errorf("%d lookups in 2 passes, want 2 (re-resolved every pass)", res.calls-calls)
	}

	// The name now points elsewhere: that is a changed published endpoint.
	res.mu.Lock()
	res.answers = map[string][]netip.Addr{"nat.example.org": {netip.MustParseAddr("198.51.100.61")}}
	res.mu.Unlock()
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.61:4500 25s 10.244.1.0/24" {
		t.Errorf("after the DNS change peer 1 = %q", got)
	}

	// Round robin including the current address does not move it.
	res.mu.Lock()
	res.answers = map[string][]netip.Addr{"nat.example.org": {netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.61")}}
	res.mu.Unlock()
	f.dev.ResetConfigs()
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("round-robin answer rewrote the endpoint: %+v", c)
	}

	// Override removed: back to the published endpoint.
	delete(n1.Annotations, mesh.AnnotationEndpointOverride)
	f.src.Upsert(n1)
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.11:51820 25s 10.244.1.0/24" {
		t.Errorf("without override peer 1 = %q", got)
	}
}

func TestEndpointOverrideBad(t *testing.T) {
	// A broken override excludes only that node, with the override's
	// annotation named; it does not fall back to the published endpoint
	// (the operator said that one is wrong).
	n1 := node(1)
	n1.Annotations[mesh.AnnotationEndpointOverride] = "nat.example.org" // no port
	f := newFixture(t, nil, selfNode(), n1, node(2))
	f.reconcile(t)
	ex := f.r.Status().Excluded
	if len(ex) != 1 || ex[0].Node != "n1" || ex[0].Reason != mesh.ReasonBadEndpoint ||
		!strings.Contains(ex[0].Err.Error(), mesh.AnnotationEndpointOverride) {
		t.Errorf("excluded = %+v", ex)
	}
	if diff := cmp.Diff(map[byte]string{2: "198.51.100.12:51820 25s 10.244.2.0/24"}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
}
