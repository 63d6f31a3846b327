package mesh

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func extRaw(name string, i byte, minute int, allowed ...string) RawExternalPeer {
	return RawExternalPeer{Name: name, PublicKey: testKey(i).String(), AllowedIPs: allowed,
		Created: t0.Add(time.Duration(minute) * time.Minute)}
}

func TestParseExternalPeers(t *testing.T) {
	own := RawNode{Name: "self", Annotations: map[string]string{AnnotationPublicKey: testKey(200).String(), AnnotationEndpoint: "198.51.100.200:51820"}, PodCIDRs: []string{"10.244.0.0/24"}}
	list := ParseNodes([]RawNode{own, goodRaw("n1", 1), goodRaw("n2", 2)}, "self")
	ka := int64(25)
	tests := []struct {
		name      string
		peers     []RawExternalPeer
		wantValid []string
		wantBad   []string
	}{
		{"valid", []RawExternalPeer{extRaw("laptop", 50, 0, "10.244.250.1/32"), extRaw("site", 51, 0, "192.168.10.0/24", "fd00:99::/64")},
			[]string{"laptop", "site"}, nil},
		{"bad key", []RawExternalPeer{{Name: "p", PublicKey: "nope", AllowedIPs: []string{"10.244.250.1/32"}}},
			nil, []string{"p:bad-public-key"}},
		{"a node's key", []RawExternalPeer{extRaw("p", 1, 0, "10.244.250.1/32")}, nil, []string{"p:duplicate-public-key"}},
		{"our own key", []RawExternalPeer{extRaw("p", 200, 0, "10.244.250.1/32")}, nil, []string{"p:duplicate-public-key"}},
		{"no allowed IPs", []RawExternalPeer{extRaw("p", 50, 0)}, nil, []string{"p:no-allowed-ips"}},
		{"host bits", []RawExternalPeer{extRaw("p", 50, 0, "10.244.250.1/24")}, nil, []string{"p:bad-allowed-ips"}},
		{"everything", []RawExternalPeer{extRaw("p", 50, 0, "0.0.0.0/0")}, nil, []string{"p:bad-allowed-ips"}},
		{"overlapping own prefixes", []RawExternalPeer{extRaw("p", 50, 0, "10.9.0.0/16", "10.9.1.0/24")}, nil, []string{"p:bad-allowed-ips"}},
		{"a node's pod CIDR", []RawExternalPeer{extRaw("p", 50, 0, "10.244.2.7/32"), extRaw("q", 51, 0, "10.244.250.1/32")},
			[]string{"q"}, []string{"p:overlaps-pod-cidr"}},
		{"our pod CIDR", []RawExternalPeer{extRaw("p", 50, 0, "10.244.0.0/16")}, nil, []string{"p:overlaps-pod-cidr"}},
		{"older peer wins an overlap", []RawExternalPeer{extRaw("a-new", 50, 5, "10.244.250.0/30"), extRaw("z-old", 51, 1, "10.244.250.1/32")},
			[]string{"z-old"}, []string{"a-new:overlaps-other-peer"}},
		{"older peer wins a key", []RawExternalPeer{extRaw("a-new", 50, 5, "10.244.250.2/32"), extRaw("z-old", 50, 1, "10.244.250.1/32")},
			[]string{"z-old"}, []string{"a-new:duplicate-public-key"}},
		{"endpoint name", []RawExternalPeer{func() RawExternalPeer {
			r := extRaw("p", 50, 0, "10.244.250.1/32")
			r.Endpoint = "laptop.example.org:51820"
			return r
		}()}, nil, []string{"p:bad-endpoint"}},
		{"keepalive out of range", []RawExternalPeer{func() RawExternalPeer {
			r := extRaw("p", 50, 0, "10.244.250.1/32")
			big := int64(70000)
			r.Keepalive = &big
			return r
		}()}, nil, []string{"p:bad-keepalive"}},
		{"endpoint and keepalive", []RawExternalPeer{func() RawExternalPeer {
			r := extRaw("p", 50, 0, "10.244.250.1/32")
			r.Endpoint, r.Keepalive = "192.0.2.7:51820", &ka
			return r
		}()}, []string{"p"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			valid, bad := ParseExternalPeers(tc.peers, list)
			var names []string
			for _, p := range valid {
				names = append(names, p.Name)
			}
			if diff := cmp.Diff(tc.wantValid, names); diff != "" {
				t.Errorf("valid (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantBad, summary(bad)); diff != "" {
				t.Errorf("refused (-want +got):\n%s", diff)
			}
			for _, e := range bad {
				if e.Err == nil || e.Err.Error() == "" {
					t.Errorf("%s refused without a message", e.Node)
				}
			}
		})
	}
}

func TestWithExternal(t *testing.T) {
	ka := 5 * time.Second
	d := Desired{
		Peers:  []Peer{{Node: "n1", AllowedIPs: pfx("10.244.1.0/24")}},
		Routes: pfx("10.244.1.0/24"),
	}
	got := WithExternal(d, []ExternalPeer{
		{Name: "site", PublicKey: testKey(51), AllowedIPs: pfx("192.168.10.0/24"), Endpoint: ap("192.0.2.7:51820"), Keepalive: &ka},
		{Name: "laptop", PublicKey: testKey(50), AllowedIPs: pfx("10.244.250.1/32")},
	}, 25*time.Second)
	want := Desired{
		Peers: []Peer{
			{Node: "n1", AllowedIPs: pfx("10.244.1.0/24")},
			{Node: "peer:laptop", PublicKey: testKey(50), AllowedIPs: pfx("10.244.250.1/32"), Keepalive: 25 * time.Second},
			{Node: "peer:site", PublicKey: testKey(51), AllowedIPs: pfx("192.168.10.0/24"), Endpoint: ap("192.0.2.7:51820"), Keepalive: 5 * time.Second},
		},
		Routes: pfx("10.244.1.0/24", "10.244.250.1/32", "192.168.10.0/24"),
	}
	if diff := cmp.Diff(want, got, cmpNet); diff != "" {
		t.Errorf("WithExternal (-want +got):\n%s", diff)
	}
	if len(d.Peers) != 1 || len(d.Routes) != 1 {
		t.Error("WithExternal modified its input")
	}
}

// TestParseExternalPeersSameOnEveryNode: every agent reaches the same
// verdicts, whichever node it runs on, also while a node is joining (its
// pod CIDR assigned, its key or endpoint not yet published): the joining
// node itself does not count its pod CIDR or key before the others do.
func TestParseExternalPeersSameOnEveryNode(t *testing.T) {
	joining := goodRaw("j", 3)
	states := []struct {
		name string
		j    RawNode
	}{
		{"pod CIDR only", with(joining, func(r *RawNode) { r.Annotations = map[string]string{} })},
		{"key, no endpoint", with(joining, func(r *RawNode) { delete(r.Annotations, AnnotationEndpoint) })},
		{"bad endpoint", with(joining, func(r *RawNode) { r.Annotations[AnnotationEndpoint] = "nope" })},
		{"joined", joining},
	}
	peers := []RawExternalPeer{
		extRaw("on-j-cidr", 50, 0, "10.244.3.7/32"),
		extRaw("j-key", 3, 0, "10.9.0.1/32"),
		extRaw("fine", 51, 0, "10.9.0.2/32"),
	}
	for _, st := range states {
		t.Run(st.name, func(t *testing.T) {
			raws := []RawNode{goodRaw("a", 1), goodRaw("b", 2), st.j}
			var first []string
			for i, self := range []string{"a", "b", "j", ""} {
				valid, bad := ParseExternalPeers(peers, ParseNodes(raws, self))
				var got []string
				for _, p := range valid {
					got = append(got, p.Name)
				}
				got = append(got, summary(bad)...)
				if i == 0 {
					first = got
					continue
				}
				if diff := cmp.Diff(first, got); diff != "" {
					t.Errorf("on %q the verdicts differ from node a's (-a +%s):\n%s", self, self, diff)
				}
			}
			if st.name == "joined" && !cmp.Equal(first, []string{"fine", "j-key:duplicate-public-key", "on-j-cidr:overlaps-pod-cidr"}) {
				t.Errorf("joined: verdicts %v, want the joined node's CIDR and key protected", first)
			}
		})
	}
}
