package mesh_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestReconcileRelay: n2 never handshakes with us; once RelayAfter has
// passed, its pod CIDR moves to the relay n1's peer (the status says so),
// its own peer stays without allowed IPs and is sent a handshake every
// RelayRetry; after a handshake with n2 the pair is direct again.
func TestReconcileRelay(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	relay := node(1)
	relay.Annotations[mesh.AnnotationRelay] = "true"
	f := newFixture(t, func(c *mesh.Config) {
		c.Now = func() time.Time { return now }
		c.RelayAfter, c.RelayRetry = 15*time.Second, time.Minute
	}, selfNode(), relay, node(2), node(3))
	at := func(d time.Duration) {
		t.Helper()
		now = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(d)
		f.reconcile(t)
	}
	direct := map[byte]string{
		1: "198.51.100.11:51820 25s 10.244.1.0/24",
		2: "198.51.100.12:51820 25s 10.244.2.0/24",
		3: "198.51.100.13:51820 25s 10.244.3.0/24",
	}
	check := func(when string, want map[byte]string) {
		t.Helper()
		got := f.peers(t)
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s: peer %d is %q, want %q", when, k, got[k], w)
			}
		}
	}

	at(0)
	check("at start", direct)
	// n1 and n3 answer; n2 never does.
	for _, i := range []byte{1, 3} {
		if err := f.dev.Handshake(key(i), now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	at(10 * time.Second)
	check("before the bound", direct)

	f.dev.ResetConfigs()
	at(16 * time.Second)
	check("relayed", map[byte]string{
		1: "198.51.100.11:51820 25s 10.244.1.0/24,10.244.2.0/24",
		2: "198.51.100.12:51820 25s ",
		3: direct[3],
	})
	for _, p := range f.r.Status().Peers {
		if want := map[string]string{"n2": "n1"}[p.Node]; p.Via != want {
			t.Errorf("status: %s via %q, want %q", p.Node, p.Via, want)
		}
	}

	// The retry: a handshake initiation provoked by switching the
	// keepalive (the peer ends with its own).
	f.dev.ResetConfigs()
	at(80 * time.Second)
	probed := false
	for _, c := range f.dev.Configs() {
		for _, pc := range c.Peers {
			if pc.PublicKey == key(2) && pc.UpdateOnly && pc.PersistentKeepaliveInterval != nil && *pc.PersistentKeepaliveInterval == 0 {
				probed = true
			}
		}
	}
	if !probed {
		t.Errorf("no handshake provoked on n2's direct path at the retry; configs %v", f.dev.Configs())
	}
	check("after the retry", map[byte]string{2: "198.51.100.12:51820 25s "})

	if err := f.dev.Handshake(key(2), now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	at(85 * time.Second)
	check("direct again", direct)
	for _, p := range f.r.Status().Peers {
		if p.Via != "" {
			t.Errorf("status: %s still via %q", p.Node, p.Via)
		}
	}
}

// TestReconcileNoRelayCandidates: without a node marked as relay nothing
// is ever relayed, however long a peer stays silent.
func TestReconcileNoRelayCandidates(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	f := newFixture(t, func(c *mesh.Config) { c.Now = func() time.Time { return now } }, selfNode(), node(1), node(2))
	f.reconcile(t)
	now = now.Add(time.Hour)
	f.reconcile(t)
	for k, p := range f.peers(t) {
		if strings.HasSuffix(p, " ") {
			t.Errorf("peer %d lost its allowed IPs: %q", k, p)
		}
	}
}
