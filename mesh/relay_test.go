package mesh

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestChooseRelay(t *testing.T) {
	cands := []string{"r1", "r2", "r3", "a"}
	counts := map[string]int{}
	for _, pair := range [][2]string{{"a", "b"}, {"c", "d"}, {"e", "f"}, {"g", "h"}, {"i", "j"}, {"k", "l"}, {"m", "n"}, {"o", "p"}} {
		x, y := ChooseRelay(pair[0], pair[1], cands), ChooseRelay(pair[1], pair[0], cands)
		if x != y {
			t.Errorf("pair %v: %q one way, %q the other", pair, x, y)
		}
		if x == pair[0] || x == pair[1] || x == "" {
			t.Errorf("pair %v relayed through %q", pair, x)
		}
		counts[x]++
	}
	if len(counts) < 2 {
		t.Errorf("8 pairs all relayed through %v: no spreading", counts)
	}
	if got := ChooseRelay("a", "b", []string{"a", "b"}); got != "" {
		t.Errorf("only the pair itself as candidates: got %q", got)
	}
}

// TestPlanRelays walks one pair through its life: direct while young,
// relayed once the bound passes without a handshake, the direct path tried
// every retry period, direct again after a handshake.
func TestPlanRelays(t *testing.T) {
	kR, kB, kC := testKey(1), testKey(2), testKey(3)
	peers := []Peer{{Node: "r", PublicKey: kR}, {Node: "b", PublicKey: kB}, {Node: "c", PublicKey: kC}, {Node: "peer:x", PublicKey: testKey(9)}}
	hs := map[wgtypes.Key]time.Time{kR: t0, kB: t0}
	paths := map[string]*pathState{}
	in := func(at time.Duration) RelayInput {
		return RelayInput{Self: "a", Now: t0.Add(at), Candidates: []string{"r"}, Handshakes: hs, After: 15 * time.Second, Retry: time.Minute}
	}
	type want struct {
		via   map[string]string
		probe []string
		next  time.Duration
	}
	steps := []struct {
		at   time.Duration
		hs   map[wgtypes.Key]time.Duration // handshakes completed before this step
		want want
	}{
		{0, nil, want{map[string]string{}, nil, 15 * time.Second}},
		{14 * time.Second, nil, want{map[string]string{}, nil, 15 * time.Second}},
		{15 * time.Second, nil, want{map[string]string{"c": "r"}, nil, 75 * time.Second}}, // just failed: first retry later
		{40 * time.Second, nil, want{map[string]string{"c": "r"}, nil, 75 * time.Second}},
		{75 * time.Second, nil, want{map[string]string{"c": "r"}, []string{"c"}, 135 * time.Second}},
		{80 * time.Second, map[wgtypes.Key]time.Duration{kC: 76 * time.Second}, want{map[string]string{}, nil, 0}},
	}
	for _, s := range steps {
		for k, at := range s.hs {
			hs[k] = t0.Add(at)
		}
		p := planRelays(in(s.at), peers, paths)
		var next time.Duration
		if !p.next.IsZero() {
			next = p.next.Sub(t0)
		}
		if diff := cmp.Diff(s.want, want{p.via, p.probe, next}, cmp.AllowUnexported(want{})); diff != "" {
			t.Errorf("at %s (-want +got):\n%s", s.at, diff)
		}
	}
	if _, ok := paths["peer:x"]; ok {
		t.Error("an external peer got a path state")
	}
	// A node that leaves is forgotten.
	planRelays(in(90*time.Second), peers[:2], paths)
	if _, ok := paths["c"]; ok {
		t.Error("path state of a node no longer desired kept")
	}
}

func TestWithRelays(t *testing.T) {
	d := Desired{Peers: []Peer{
		{Node: "b", AllowedIPs: pfx("10.244.2.0/24")},
		{Node: "c", AllowedIPs: pfx("10.244.3.0/24", "fd00:3::/64")},
		{Node: "r", AllowedIPs: pfx("10.244.9.0/24")},
	}, Routes: pfx("10.244.2.0/24", "10.244.3.0/24", "10.244.9.0/24", "fd00:3::/64")}
	got := WithRelays(d, map[string]string{"c": "r", "b": "gone"})
	want := Desired{Peers: []Peer{
		{Node: "b", AllowedIPs: pfx("10.244.2.0/24")},
		{Node: "c", Via: "r"},
		{Node: "r", AllowedIPs: pfx("10.244.3.0/24", "10.244.9.0/24", "fd00:3::/64")},
	}, Routes: d.Routes}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("WithRelays (-want +got):\n%s", diff)
	}
	if len(d.Peers[1].AllowedIPs) != 2 || len(d.Peers[2].AllowedIPs) != 1 {
		t.Error("WithRelays modified its input")
	}
}

// TestRelayCandidates: marked nodes if any, else every node with a
// public endpoint not marked "false"; the same list on every node,
// including the node itself only once it parses as a peer.
func TestRelayCandidates(t *testing.T) {
	ep := func(r RawNode, e string) RawNode {
		return with(r, func(r *RawNode) { r.Annotations[AnnotationEndpoint] = e })
	}
	mark := func(r RawNode, v string) RawNode {
		return with(r, func(r *RawNode) { r.Annotations[AnnotationRelay] = v })
	}
	tests := []struct {
		name  string
		nodes []RawNode
		want  []string
	}{
		{"public endpoints", []RawNode{goodRaw("a", 1), goodRaw("b", 2), ep(goodRaw("c", 3), "[2001:db8:100::3]:51820")}, []string{"a", "b", "c"}},
		{"marked win", []RawNode{goodRaw("a", 1), mark(ep(goodRaw("b", 2), "10.0.0.2:51820"), "true"), goodRaw("c", 3)}, []string{"b"}},
		{"mark is case-insensitive", []RawNode{mark(goodRaw("a", 1), " True "), goodRaw("b", 2)}, []string{"a"}},
		{"not public", []RawNode{
			ep(goodRaw("rfc1918", 1), "192.168.1.5:51820"),
			ep(goodRaw("ula", 2), "[fd00::5]:51820"),
			ep(goodRaw("cgnat", 3), "100.64.3.1:51820"),
			ep(goodRaw("loopback", 4), "127.0.0.1:51820"),
			ep(goodRaw("linklocal", 5), "[fe80::1]:51820"),
			ep(goodRaw("name", 6), "node.example.org:51820"),
			ep(goodRaw("mapped", 7), "[::ffff:10.1.2.3]:51820"),
			goodRaw("public", 8),
		}, []string{"public"}},
		{"opted out", []RawNode{mark(goodRaw("a", 1), "false"), goodRaw("b", 2), goodRaw("c", 3)}, []string{"b", "c"}},
		{"override counts", []RawNode{with(ep(goodRaw("a", 1), "10.0.0.1:51820"), func(r *RawNode) {
			r.Annotations[AnnotationEndpointOverride] = "192.0.2.1:51820"
		}), goodRaw("b", 2)}, []string{"a", "b"}},
		{"not yet a peer", []RawNode{with(goodRaw("a", 1), func(r *RawNode) { delete(r.Annotations, AnnotationPublicKey) }), goodRaw("b", 2), goodRaw("c", 3)}, []string{"b", "c"}},
		{"none", []RawNode{ep(goodRaw("a", 1), "10.0.0.1:51820"), ep(goodRaw("b", 2), "10.0.0.2:51820")}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, self := range append([]string{""}, namesOf(tc.nodes)...) {
				got := RelayCandidates(ParseNodes(tc.nodes, self))
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("seen from %q (-want +got):\n%s", self, diff)
				}
			}
		})
	}
}

func namesOf(raws []RawNode) []string {
	var out []string
	for _, r := range raws {
		out = append(out, r.Name)
	}
	return out
}

// TestPlanRelaysStale: a direct path that worked and then goes without a
// handshake for staleBound (180 s + 2 × keepalive here) is relayed, the
// same moment on both ends; a pair without keepalive never is (its old
// handshake may only mean it is idle); with no relay left the pair stays
// direct and is not reconsidered until its handshake changes.
func TestPlanRelaysStale(t *testing.T) {
	kR, kB, kQ := testKey(1), testKey(2), testKey(3)
	two := 2 * time.Second
	peers := []Peer{{Node: "r", PublicKey: kR, Keepalive: two}, {Node: "b", PublicKey: kB, Keepalive: two}, {Node: "q", PublicKey: kQ}}
	hs := map[wgtypes.Key]time.Time{kR: t0, kB: t0, kQ: t0}
	type want struct {
		via  map[string]string
		due  bool // what the watch says just before this step's pass
		next time.Duration
	}
	steps := []struct {
		at   time.Duration
		hs   map[wgtypes.Key]time.Duration
		want want
	}{
		{0, nil, want{map[string]string{}, false, 0}},
		// Renewed at 150 s as WireGuard does; r and q stay silent.
		{183 * time.Second, map[wgtypes.Key]time.Duration{kB: 150 * time.Second}, want{map[string]string{}, false, 0}},
		// r's handshake is 184 s old: stale (but r is our only relay
		// candidate: stuck, not relayed).
		{184 * time.Second, nil, want{map[string]string{}, true, 0}},
		{200 * time.Second, nil, want{map[string]string{}, false, 0}},
		// b's is 184 s old: relayed through r; first retry a minute on.
		{334 * time.Second, nil, want{map[string]string{"b": "r"}, true, 394 * time.Second}},
		{335 * time.Second, nil, want{map[string]string{"b": "r"}, false, 394 * time.Second}},
		// A handshake on b's direct path: the watch sees it, direct.
		{340 * time.Second, map[wgtypes.Key]time.Duration{kB: 339 * time.Second}, want{map[string]string{}, true, 0}},
		// r answers again, then goes stale again: reconsidered.
		{400 * time.Second, map[wgtypes.Key]time.Duration{kR: 399 * time.Second}, want{map[string]string{}, false, 0}},
		{583 * time.Second, map[wgtypes.Key]time.Duration{kB: 500 * time.Second}, want{map[string]string{}, true, 0}},
		// q (no keepalive) is never stale, however old its handshake.
		{3600 * time.Second, map[wgtypes.Key]time.Duration{kB: 3599 * time.Second, kR: 3599 * time.Second}, want{map[string]string{}, false, 0}},
	}
	for _, side := range []struct{ self, other string }{{"a", "b"}, {"b", "a"}} {
		paths := map[string]*pathState{}
		for k := range hs {
			delete(hs, k)
		}
		hs[kR], hs[kB], hs[kQ] = t0, t0, t0
		ps := slices.Clone(peers)
		if side.self == "b" {
			ps[1].Node = "a" // b's view: the far node is a, same key and times
		}
		for _, s := range steps {
			for k, at := range s.hs {
				hs[k] = t0.Add(at)
			}
			now := t0.Add(s.at)
			gotDue := due(now, hs, paths)
			p := planRelays(RelayInput{Self: side.self, Now: now, Candidates: []string{"r"}, Handshakes: hs,
				After: 15 * time.Second, Retry: time.Minute, Stale: 180 * time.Second}, ps, paths)
			via := map[string]string{}
			for far, r := range p.via {
				if far == side.other {
					far = "b" // compare both sides against one table
				}
				via[far] = r
			}
			var next time.Duration
			if !p.next.IsZero() {
				next = p.next.Sub(t0)
			}
			if diff := cmp.Diff(s.want, want{via, gotDue, next}, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("%s at %s (-want +got):\n%s", side.self, s.at, diff)
			}
		}
	}
}

func TestStaleBound(t *testing.T) {
	for _, tc := range []struct{ ka, want time.Duration }{
		{0, 0}, {2 * time.Second, 184 * time.Second}, {25 * time.Second, 230 * time.Second},
	} {
		if got := staleBound(DefaultRelayStale, tc.ka); got != tc.want {
			t.Errorf("staleBound(keepalive %s) = %s, want %s", tc.ka, got, tc.want)
		}
	}
}
