package datapath

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// maxRotationOutage bounds how long a rotation may cut a node off. The
// measured figure is logged; the bound only catches regressions such as a
// peer that never switches or a handshake waiting for a whole rekey cycle.
const maxRotationOutage = 2 * time.Second

// TestKeyRotation rotates the key of a public node and of a NAT'd node
// while pings (every 10 ms) run to and from them, and measures how long
// each path was down. The rotation is requested the way wgmeshctl
// rotate-key does it, with the wgmesh.io/rotate-key annotation.
func TestKeyRotation(t *testing.T) {
	tp := newTopo(t,
		topoSpec{name: "a"},
		topoSpec{name: "b"},
		topoSpec{name: "c", nat: true, annotations: map[string]string{mesh.AnnotationKeepalive: "2"}},
	)
	tp.waitMesh(20 * time.Second)
	for _, n := range []*hnode{tp.node("a"), tp.node("b")} {
		c := tp.node("c")
		netnstest.Eventually(t, 15*time.Second, n.name+" reaches c", func() error {
			if p := n.peers(t)[c.publicKey(t)]; p.handshake.IsZero() {
				return fmt.Errorf("no handshake with c yet")
			}
			return nil
		})
	}
	tp.rememberKeys()

	// Each direction on its own: traffic the other way would hide a
	// stalled handshake (it makes the other side start one).
	for _, tc := range []struct {
		name, node string
		pings      [][2]string
	}{
		{"public node, flows from it", "a", [][2]string{{"a", "b"}, {"a", "c"}}},
		{"public node, flows to it", "a", [][2]string{{"b", "a"}, {"c", "a"}}},
		{"NAT'd node, flows from it", "c", [][2]string{{"c", "a"}, {"c", "b"}}},
		{"NAT'd node, flows to it", "c", [][2]string{{"a", "c"}, {"b", "c"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { testRotation(t, tp, tc.node, tc.pings) })
	}
	assertNoPrivateKeys(t, tp)
}

func testRotation(t *testing.T, tp *topo, name string, pairs [][2]string) {
	n := tp.node(name)
	oldPriv, err := wgdev.LoadKey(n.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	oldPub := oldPriv.PublicKey().String()
	before := map[string]wgPeer{}
	for _, o := range tp.nodes {
		if o != n {
			before[o.name] = o.peers(t)[oldPub]
		}
	}

	const interval = 10 * time.Millisecond
	var pingers []*pinger
	for _, p := range pairs {
		pingers = append(pingers, startPing(t, tp.node(p[0]), tp.node(p[1]), interval))
	}
	time.Sleep(time.Second) // every path runs before the rotation

	req := fmt.Sprintf("req-%s-%d", name, time.Now().UnixNano())
	t0 := time.Now()
	tp.annotate(name, map[string]string{mesh.AnnotationRotateKey: req})
	var newPub string
	netnstest.Eventually(t, 10*time.Second, name+" answers the rotation", func() error {
		ann := tp.annotations(name)
		if ann[mesh.AnnotationKeyRotated] != req {
			return fmt.Errorf("%s = %q", mesh.AnnotationKeyRotated, ann[mesh.AnnotationKeyRotated])
		}
		newPub = ann[mesh.AnnotationPublicKey]
		return nil
	})
	answered := time.Since(t0)
	if newPub == oldPub {
		t.Fatal("answered but still publishes the old key")
	}
	for _, o := range tp.nodes {
		if o == n {
			continue
		}
		netnstest.Eventually(t, 10*time.Second, o.name+" swaps the peer "+name, func() error {
			peers := o.peers(t)
			if _, ok := peers[oldPub]; ok {
				return fmt.Errorf("old key still a peer")
			}
			p, ok := peers[newPub]
			if !ok {
				return fmt.Errorf("new key not a peer")
			}
			// Same allowed IPs; the endpoint is the published one or,
			// for a NAT'd node, the NAT's address it was reached at.
			if p.allowedIPs != before[o.name].allowedIPs || p.endpoint != before[o.name].endpoint {
				return fmt.Errorf("new peer %s %s, old one had %s %s", p.endpoint, p.allowedIPs, before[o.name].endpoint, before[o.name].allowedIPs)
			}
			return nil
		})
	}
	swapped := time.Since(t0)
	time.Sleep(3 * time.Second) // let every path recover and show it
	t1 := time.Now()

	var worst time.Duration
	var report []string
	for _, p := range pingers {
		st := p.stop(t, t0.Add(-500*time.Millisecond), t1)
		report = append(report, fmt.Sprintf("%s->%s %dms", p.from, p.to, st.Max.Milliseconds()))
		if st.Last.Before(t0.Add(swapped)) {
			t.Errorf("%s->%s: no reply after the peers swapped (last %s)", p.from, p.to, st.Last.Format(time.StampMilli))
		}
		worst = max(worst, st.Max)
	}
	t.Logf("rotation of %s: answered after %s, all peers swapped after %s; outage per path (longest gap between ping replies, 10 ms pings): %s",
		name, answered.Round(time.Millisecond), swapped.Round(time.Millisecond), strings.Join(report, ", "))
	if worst > maxRotationOutage {
		t.Errorf("rotation of %s cut a path for %s, want at most %s", name, worst.Round(time.Millisecond), maxRotationOutage)
	}

	// The device uses the new key; the key file holds it, 0600, alone,
	// and the old key is nowhere in the directory.
	if out, err := wgShow(n.agent, "public-key"); err != nil || strings.TrimSpace(out) != newPub {
		t.Errorf("device public key %q (%v), want %s", strings.TrimSpace(out), err, newPub)
	}
	if n.publicKey(t) != newPub {
		t.Errorf("key file holds %s, want %s", n.publicKey(t), newPub)
	}
	dir := filepath.Dir(n.keyFile)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key file", len(entries))
	}
	st, err := os.Stat(n.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %#o after rotation, want 0600", st.Mode().Perm())
	}
	for _, e := range entries {
		raw, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if bytes.Contains(raw, []byte(oldPriv.String())) || bytes.Contains(raw, []byte(hex.EncodeToString(oldPriv[:]))) {
			t.Errorf("%s still holds the old private key", e.Name())
		}
	}
	tp.rememberKeys()
}
