package mesh

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLocationOf(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		labels      map[string]string
		want        string
	}{
		{"none", nil, nil, ""},
		{"zone label", nil, map[string]string{LabelZone: "eu-west-1a"}, "eu-west-1a"},
		{"own label beats zone", nil, map[string]string{LabelZone: "eu-west-1a", LabelLocation: "vpc-a"}, "vpc-a"},
		{"annotation beats labels", map[string]string{AnnotationLocation: " dc1 "}, map[string]string{LabelZone: "z", LabelLocation: "l"}, "dc1"},
		{"blank annotation falls through", map[string]string{AnnotationLocation: "  "}, map[string]string{LabelZone: "z"}, "z"},
		{"too long is none", map[string]string{AnnotationLocation: string(make([]byte, 64))}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := LocationOf(RawNode{Annotations: tc.annotations, Labels: tc.labels})
			if got != tc.want {
				t.Errorf("LocationOf = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseNodeLocation(t *testing.T) {
	tests := []struct {
		name     string
		mod      func(*RawNode)
		wantLoc  string
		wantPriv Endpoint
		wantErr  Reason
	}{
		{"no location", func(*RawNode) {}, "", Endpoint{}, ""},
		{"location and private endpoint", func(r *RawNode) {
			r.Labels = map[string]string{LabelZone: "a"}
			r.Annotations[AnnotationPrivateEndpoint] = "203.0.113.11:51820"
		}, "a", Endpoint{Host: "203.0.113.11", Port: 51820}, ""},
		{"ipv6 private endpoint", func(r *RawNode) {
			r.Annotations[AnnotationLocation] = "b"
			r.Annotations[AnnotationPrivateEndpoint] = "[2001:db8:100::11]:51820"
		}, "b", Endpoint{Host: "2001:db8:100::11", Port: 51820}, ""},
		{"private endpoint is a name", func(r *RawNode) {
			r.Annotations[AnnotationPrivateEndpoint] = "node1.internal:51820"
		}, "", Endpoint{}, ReasonBadPrivateEndpoint},
		{"private endpoint without port", func(r *RawNode) {
			r.Annotations[AnnotationPrivateEndpoint] = "203.0.113.11"
		}, "", Endpoint{}, ReasonBadPrivateEndpoint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := ParseNode(with(goodRaw("n1", 1), tc.mod))
			if tc.wantErr != "" {
				if ReasonOf(err) != tc.wantErr || !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want reason %s wrapping ErrMalformed", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Location != tc.wantLoc || n.PrivateEndpoint != tc.wantPriv {
				t.Errorf("location %q private %v, want %q %v", n.Location, n.PrivateEndpoint, tc.wantLoc, tc.wantPriv)
			}
		})
	}
}

// TestComputeLocations: a peer of our location is dialled at its private
// endpoint, any other at its public one (the override included); without
// a location of our own, or without a private endpoint, nothing changes.
func TestComputeLocations(t *testing.T) {
	inLoc := func(name string, i byte, loc, priv string) RawNode {
		return with(goodRaw(name, i), func(r *RawNode) {
			r.Labels = map[string]string{LabelZone: loc}
			if priv != "" {
				r.Annotations[AnnotationPrivateEndpoint] = priv
			}
		})
	}
	nodes := []RawNode{
		inLoc("a1", 1, "a", "203.0.113.11:51820"),
		inLoc("a2", 2, "a", ""), // no private endpoint published (yet)
		with(inLoc("a3", 3, "a", "203.0.113.13:51820"), func(r *RawNode) {
			r.Annotations[AnnotationEndpointOverride] = "192.0.2.13:4000"
		}),
		inLoc("b4", 4, "b", "203.0.113.14:51820"),
		goodRaw("n5", 5), // no location
	}
	tests := []struct {
		name string
		self string
		want map[string]string
	}{
		{"self in a", "a", map[string]string{
			"a1": "203.0.113.11:51820", "a2": "198.51.100.12:51820", "a3": "203.0.113.13:51820",
			"b4": "198.51.100.14:51820", "n5": "198.51.100.15:51820"}},
		{"self in b", "b", map[string]string{
			"a1": "198.51.100.11:51820", "a2": "198.51.100.12:51820", "a3": "192.0.2.13:4000",
			"b4": "203.0.113.14:51820", "n5": "198.51.100.15:51820"}},
		{"self without location", "", map[string]string{
			"a1": "198.51.100.11:51820", "a2": "198.51.100.12:51820", "a3": "192.0.2.13:4000",
			"b4": "198.51.100.14:51820", "n5": "198.51.100.15:51820"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			self := selfNode()
			self.Location = tc.self
			d := Compute(Input{Self: self, Nodes: nodes})
			got := map[string]string{}
			for _, p := range d.Peers {
				got[p.Node] = p.Endpoint.String()
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
			if len(d.Excluded) != 0 {
				t.Errorf("excluded %v", summary(d.Excluded))
			}
		})
	}
}

func TestNodeListSelfLocation(t *testing.T) {
	l := ParseNodes([]RawNode{{Name: "self", Labels: map[string]string{LabelLocation: "dc1"}, PodCIDRs: []string{"10.244.0.0/24"}}}, "self")
	if s := l.Self(testKey(9)); s.Location != "dc1" {
		t.Errorf("Self().Location = %q, want dc1", s.Location)
	}
}
