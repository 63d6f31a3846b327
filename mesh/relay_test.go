package mesh

import (
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
	got := withRelays(d, map[string]string{"c": "r", "b": "gone"})
	want := Desired{Peers: []Peer{
		{Node: "b", AllowedIPs: pfx("10.244.2.0/24")},
		{Node: "c", Via: "r"},
		{Node: "r", AllowedIPs: pfx("10.244.3.0/24", "10.244.9.0/24", "fd00:3::/64")},
	}, Routes: d.Routes}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("withRelays (-want +got):\n%s", diff)
	}
	if len(d.Peers[1].AllowedIPs) != 2 || len(d.Peers[2].AllowedIPs) != 1 {
		t.Error("withRelays modified its input")
	}
}
