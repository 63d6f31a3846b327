package datapath

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
)

// TestNATRoaming: node c sits behind a masquerading router (203.0.113.2
// inside, 198.51.100.13 outside) and publishes its own, unreachable
// address; its Node carries wgmesh.io/persistent-keepalive=2, which it also
// applies toward its peers. The public nodes learn c's NAT address:port
// from its handshakes (roaming), reach it, and their resyncs keep that
// endpoint. An endpoint-override name, resolved through the node's real
// resolver from /etc/hosts, is re-resolved on every pass: a changed answer
// is written (the published endpoint changed), and c's keepalives roam the
// peer back to the working address, where it then stays.
func TestNATRoaming(t *testing.T) {
	tp := newTopo(t,
		topoSpec{name: "a", hosts: "127.0.0.1 localhost\n198.51.100.13 c.nat.wgmesh.test\n"},
		topoSpec{name: "b"},
		topoSpec{name: "c", nat: true, annotations: map[string]string{mesh.AnnotationKeepalive: "2"}},
	)
	a, b, c := tp.node("a"), tp.node("b"), tp.node("c")
	tp.waitMesh(20 * time.Second)

	// c published its inside address: nobody can send to it.
	if ep := tp.annotations("c")[mesh.AnnotationEndpoint]; ep != "203.0.113.2:51820" {
		t.Fatalf("c published %q, want its own 203.0.113.2:51820", ep)
	}
	// No traffic at all yet: c's own keepalives alone must let a and b
	// learn where c really is.
	for _, n := range []*hnode{a, b} {
		netnstest.Eventually(t, 15*time.Second, n.name+" learns c's NAT address", func() error {
			p := n.peers(t)[c.publicKey(t)]
			if !strings.HasPrefix(p.endpoint, c.seenAs.String()+":") || p.handshake.IsZero() {
				return fmt.Errorf("peer c: endpoint %q, handshake %v", p.endpoint, p.handshake)
			}
			return nil
		})
		if ka := n.peers(t)[c.publicKey(t)].keepalive; ka != "2" {
			t.Errorf("%s keeps peer c alive every %q s, want 2 (c's annotation)", n.name, ka)
		}
		if ka := c.peers(t)[n.publicKey(t)].keepalive; ka != "2" {
			t.Errorf("c keeps peer %s alive every %q s, want 2 (its own annotation)", n.name, ka)
		}
	}
	roamed := a.peers(t)[c.publicKey(t)].endpoint
	t.Logf("a's peer c: endpoint %s (published 203.0.113.2:51820)", roamed)

	// Reached by the others, and reaches them.
	a.ping(t, c)
	b.ping(t, c)
	c.ping(t, a)
	c.ping(t, b)

	// Several resyncs (1 s each) later the roamed endpoint is still there
	// and the agents never wrote it.
	time.Sleep(4 * resync)
	if ep := a.peers(t)[c.publicKey(t)].endpoint; ep != roamed {
		t.Errorf("a's peer c endpoint %s after resyncs, want the roamed %s", ep, roamed)
	}
	for _, n := range []*hnode{a, b} {
		for _, l := range strings.Split(n.agent.Output(), "\n") {
			if strings.Contains(l, `"msg":"updated peer"`) && strings.Contains(l, c.publicKey(t)) && strings.Contains(l, `"endpoint"`) &&
				!strings.Contains(l, `"endpoint":null`) {
				t.Errorf("%s rewrote c's endpoint: %s", n.name, l)
			}
		}
	}

	// Operator override by name; a resolves it from its /etc/hosts. The
	// name points at the NAT's address with c's mapped port.
	port := roamed[strings.LastIndex(roamed, ":")+1:]
	tp.annotate("c", map[string]string{mesh.AnnotationEndpointOverride: "c.nat.wgmesh.test:" + port})
	time.Sleep(3 * resync)
	if ep := a.peers(t)[c.publicKey(t)].endpoint; ep != roamed {
		t.Errorf("override resolving to the roamed address changed a's peer c to %s", ep)
	}
	// The name moves to an address where nothing answers: a writes it
	// (the published endpoint changed) on the next passes...
	writeHosts(t, a, "127.0.0.1 localhost\n198.51.100.99 c.nat.wgmesh.test\n")
	moved := "198.51.100.99:" + port
	start := time.Now()
	// ...which the device shows only until c's next keepalive (every 2 s)
	// roams it back: too short a state to poll for on a loaded machine.
	// a's log of the write stays. The bound: Go's resolver re-reads
	// /etc/hosts at most every 5 s, a resyncs every second; the rest is
	// for a loaded 2-core box (the e2e package beside it once took 17 s).
	var wrote time.Time
	netnstest.Eventually(t, 30*time.Second, "a follows the new DNS answer", func() error {
		var ok bool
		if wrote, ok = wroteEndpoint(a.agent.Output(), c.publicKey(t), "198.51.100.99"); !ok {
			return fmt.Errorf("a has not logged writing %s for peer c", moved)
		}
		return nil
	})
	t.Logf("a wrote the re-resolved endpoint %s %s after /etc/hosts changed", moved, wrote.Sub(start).Round(time.Millisecond))
	// ...and c's next keepalive (every 2 s) roams it back, for good.
	netnstest.Eventually(t, 10*time.Second, "c's keepalive roams a's peer back", func() error {
		if ep := a.peers(t)[c.publicKey(t)].endpoint; ep != roamed {
			return fmt.Errorf("a's peer c endpoint %s", ep)
		}
		return nil
	})
	time.Sleep(4 * resync)
	if ep := a.peers(t)[c.publicKey(t)].endpoint; ep != roamed {
		t.Errorf("resync overwrote the roamed endpoint again: %s", ep)
	}
	a.ping(t, c)
	assertNoPrivateKeys(t, tp)
}

// wroteEndpoint returns when an agent's JSON log shows it writing an
// endpoint with address ip for the peer with key pub, if it does.
func wroteEndpoint(log, pub, ip string) (time.Time, bool) {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"msg":"updated peer"`) && strings.Contains(l, pub) && strings.Contains(l, `"IP":"`+ip+`"`) {
			var rec struct{ Time time.Time }
			json.Unmarshal([]byte(l), &rec)
			return rec.Time, true
		}
	}
	return time.Time{}, false
}

func writeHosts(t *testing.T, n *hnode, content string) {
	t.Helper()
	// In place, not by rename: the node sees the file through a bind
	// mount of this inode.
	f, err := os.OpenFile(n.hosts, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Go caches /etc/hosts by mtime and size; make the change visible
	// even within the same second.
	later := time.Now().Add(time.Second)
	os.Chtimes(n.hosts, later, later)
}

// ping pings to's pod gateway from n, three times, and fails the test
// unless replies come back.
func (n *hnode) ping(t *testing.T, to *hnode) {
	t.Helper()
	out, err := n.ns.Run("ping", "-c", "3", "-i", "0.2", "-W", "2", to.wgAddr.String())
	if err != nil {
		t.Fatalf("%s -> %s: %v\n%s", n.name, to.name, err, out)
	}
}
