package mesh

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEndpointResolver: only DNS-name endpoints are looked up, once per
// pass each; a failed lookup keeps the last good address; a name no node
// uses any more leaves the cache, so it is not kept forever nor reused.
func TestEndpointResolver(t *testing.T) {
	a := netip.MustParseAddr
	ep := func(host string) Node { return Node{Endpoint: Endpoint{Host: host, Port: 51820}} }
	fr := &fakeResolver{answers: map[string][]netip.Addr{
		"a.example.org": {a("198.51.100.21")},
		"b.example.org": {a("198.51.100.22")},
	}}
	e := newEndpointResolver(fr, 0, slog.New(slog.DiscardHandler))
	ctx := context.Background()

	got := e.resolve(ctx, []Node{ep("198.51.100.9"), ep("a.example.org"), ep("b.example.org"), ep("a.example.org")})
	want := map[string]netip.Addr{"a.example.org": a("198.51.100.21"), "b.example.org": a("198.51.100.22")}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("first pass (-want +got):\n%s", diff)
	}
	if fr.calls != 2 {
		t.Errorf("%d lookups, want 2 (one per name, none for the IP literal)", fr.calls)
	}

	fr.answers = nil // outage
	got = e.resolve(ctx, []Node{ep("a.example.org")})
	if diff := cmp.Diff(map[string]netip.Addr{"a.example.org": a("198.51.100.21")}, got,
		cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("outage (-want +got):\n%s", diff)
	}

	// b left and came back during the outage: its old address is gone.
	got = e.resolve(ctx, []Node{ep("b.example.org")})
	if _, ok := got["b.example.org"]; ok || len(got) != 0 {
		t.Errorf("after b returned in an outage: %v, want empty", got)
	}

	// Without a Resolver nothing is looked up and nothing resolves.
	none := newEndpointResolver(nil, 0, slog.New(slog.DiscardHandler))
	if got := none.resolve(ctx, []Node{ep("a.example.org")}); len(got) != 0 {
		t.Errorf("no resolver: %v, want empty", got)
	}
}

func TestPickAddr(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		addrs []netip.Addr
		prev  netip.Addr
		want  netip.Addr
	}{
		{[]netip.Addr{a("198.51.100.9"), a("198.51.100.3")}, netip.Addr{}, a("198.51.100.3")},
		{[]netip.Addr{a("198.51.100.9"), a("198.51.100.3")}, a("198.51.100.9"), a("198.51.100.9")},
		{[]netip.Addr{a("2001:db8::1"), a("198.51.100.3")}, netip.Addr{}, a("198.51.100.3")},
		{[]netip.Addr{a("198.51.100.4")}, a("198.51.100.9"), a("198.51.100.4")},
	}
	for _, tt := range tests {
		if got := pickAddr(tt.addrs, tt.prev); got != tt.want {
			t.Errorf("pickAddr(%v, %v) = %v, want %v", tt.addrs, tt.prev, got, tt.want)
		}
	}
}

// fakeResolver answers from a map and counts lookups.
type fakeResolver struct {
	answers map[string][]netip.Addr
	calls   int
}

func (f *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.calls++
	if a, ok := f.answers[host]; ok {
		return a, nil
	}
	return nil, context.DeadlineExceeded
}
