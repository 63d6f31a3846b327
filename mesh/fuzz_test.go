package mesh_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// Seed corpora beyond the f.Add calls are in testdata/fuzz/<FuzzName>;
// integration/scripts/fuzz.sh runs every target for a bounded time.

var knownReasons = []mesh.Reason{
	mesh.ReasonNoPublicKey, mesh.ReasonBadPublicKey, mesh.ReasonNoEndpoint, mesh.ReasonBadEndpoint,
	mesh.ReasonNoPodCIDR, mesh.ReasonBadPodCIDR, mesh.ReasonBadKeepalive,
}

// FuzzParseEndpoint: an accepted endpoint is normalised, its String form
// parses back to itself, and a rejection wraps ErrMalformed.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"198.51.100.1:51820", "[2001:db8::1]:51820", "wg.example.org.:1", "::1:5", "a:0",
		"[::ffff:198.51.100.1]:7", " host:65535 ", "1.2.3.4:65536", "[fe80::1%eth0]:51820", "xn--bcher-kva.example:9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := mesh.ParseEndpoint(s)
		if err != nil {
			if !errors.Is(err, mesh.ErrMalformed) || err.Error() == "" {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if ep.Host == "" || ep.Port == 0 {
			t.Fatalf("accepted %q as %+v", s, ep)
		}
		again, err := mesh.ParseEndpoint(ep.String())
		if err != nil || again != ep {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, ep, ep.String(), again, err)
		}
		ap, isIP := ep.AddrPort()
		if _, perr := netip.ParseAddr(ep.Host); (perr == nil) != isIP {
			t.Fatalf("AddrPort ok=%v for host %q", isIP, ep.Host)
		}
		if isIP && (ap.Port() != ep.Port || ap.Addr().Is4In6() || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast()) {
			t.Fatalf("bad address endpoint %v from %q", ap, s)
		}
		if !isIP && (ep.Host != strings.ToLower(ep.Host) || strings.HasSuffix(ep.Host, ".")) {
			t.Fatalf("name %q not normalised", ep.Host)
		}
	})
}

// FuzzParseKeepalive: an accepted keepalive is whole seconds in range and
// its number of seconds parses back to it.
func FuzzParseKeepalive(f *testing.F) {
	for _, s := range []string{"25", "25s", "0", "1m", "65535", "65536", "-1", "1.5s", "18h12m15s", " 7 ", "1e3", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := mesh.ParseKeepalive(s)
		if err != nil {
			if !errors.Is(err, mesh.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if d < 0 || d > mesh.MaxKeepalive || d%time.Second != 0 {
			t.Fatalf("accepted %q as %s", s, d)
		}
		again, err := mesh.ParseKeepalive(strconv.Itoa(int(d / time.Second)))
		if err != nil || again != d {
			t.Fatalf("%q -> %s -> %v, %v", s, d, again, err)
		}
	})
}

// FuzzParseNode feeds arbitrary annotations and podCIDRs to the node
// validation. An accepted node satisfies every invariant the rest of the
// mesh relies on; a rejected one gets a NodeError with a known reason.
func FuzzParseNode(f *testing.F) {
	valid := "ZOoSQ2xCxeRrtUrCz5mNDvjSGKcvbGcHtXEMcIiv4Fs="
	f.Add("n1", valid, "198.51.100.11:51820", "", "", "10.244.1.0/24", true)
	f.Add("n1", valid, "198.51.100.11:51820", "nat.example.org:4500", "25", "10.244.1.0/24,fd00:10:244:1::/64", true)
	f.Add("n2", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "x:1", "", "", "10.244.1.0/24", false)
	f.Add("n3", valid+" ", "", "[2001:db8::1]:1", "0", "10.244.1.5/24", true)
	f.Add("n4", valid, "198.51.100.11:51820", " ", "65536", "10.0.0.0/8,10.1.0.0/16", true)
	f.Add("", "", "", "", "", "", false)
	f.Fuzz(func(t *testing.T, name, key, endpoint, override, keepalive, cidrs string, hasKeepalive bool) {
		ann := map[string]string{}
		for k, v := range map[string]string{
			mesh.AnnotationPublicKey: key, mesh.AnnotationEndpoint: endpoint, mesh.AnnotationEndpointOverride: override,
		} {
			if v != "" {
				ann[k] = v
			}
		}
		if hasKeepalive {
			ann[mesh.AnnotationKeepalive] = keepalive
		}
		var podCIDRs []string
		if cidrs != "" {
			podCIDRs = strings.Split(cidrs, ",")
		}
		raw := mesh.RawNode{Name: name, Annotations: ann, PodCIDRs: podCIDRs}
		n, err := mesh.ParseNode(raw)
		if err != nil {
			var ne *mesh.NodeError
			if !errors.As(err, &ne) || ne.Node != name || !slices.Contains(knownReasons, ne.Reason) || mesh.ReasonOf(err) != ne.Reason {
				t.Fatalf("error %v (%T) is not a NodeError for %q with a known reason", err, err, name)
			}
			return
		}
		if n.Name != name || n.PublicKey == (wgtypes.Key{}) {
			t.Fatalf("accepted node %+v", n)
		}
		if k, err := mesh.ParsePublicKey(n.PublicKey.String()); err != nil || k != n.PublicKey {
			t.Fatalf("key does not round-trip: %v", err)
		}
		src := endpoint
		if strings.TrimSpace(override) != "" {
			src = override
		}
		if want, err := mesh.ParseEndpoint(src); err != nil || want != n.Endpoint {
			t.Fatalf("endpoint %+v, but its source %q parses to %+v, %v", n.Endpoint, src, want, err)
		}
		if len(n.PodCIDRs) == 0 || len(n.PodCIDRs) != len(podCIDRs) {
			t.Fatalf("pod CIDRs %v from %q", n.PodCIDRs, podCIDRs)
		}
		for i, p := range n.PodCIDRs {
			if !p.IsValid() || p.Masked() != p || p.Bits() == 0 || p.Addr().Is4In6() {
				t.Fatalf("accepted pod CIDR %v", p)
			}
			if i > 0 && (n.PodCIDRs[i-1].Overlaps(p) || n.PodCIDRs[i-1].Addr().Compare(p.Addr()) > 0) {
				t.Fatalf("pod CIDRs overlap or unsorted: %v", n.PodCIDRs)
			}
		}
		if (n.Keepalive != nil) != hasKeepalive {
			t.Fatalf("keepalive %v with annotation present=%v", n.Keepalive, hasKeepalive)
		}
		if n.Keepalive != nil && (*n.Keepalive < 0 || *n.Keepalive > mesh.MaxKeepalive || *n.Keepalive%time.Second != 0) {
			t.Fatalf("keepalive %s", *n.Keepalive)
		}
	})
}

// fuzzNodes turns bytes into a node list that is dense in conflicts: 5
// bytes per node pick a key out of 8 (0 = this node's), a pod CIDR out of a
// few overlapping ones, an endpoint (or none, or a bad one), a keepalive
// annotation and a creation time.
func fuzzNodes(data []byte, names string) []mesh.RawNode {
	cidrs := []string{"10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.1.0/25", "10.244.0.0/16", "fd00::/64", "10.244.3.0/24", "bad"}
	eps := []string{"", "198.51.100.%d:51820", "[2001:db8::%d]:51820", "203.0.113.%d:4500", "nope", "198.51.100.%d:51821"}
	kas := []string{"", "0", "25", "x"}
	var out []mesh.RawNode
	for i := 0; i+5 <= len(data) && len(out) < len(names); i += 5 {
		b := data[i : i+5]
		name := string(names[len(out)])
		ann := map[string]string{}
		if kb := b[0] % 9; kb < 8 {
			ann[mesh.AnnotationPublicKey] = fuzzKey(kb).String()
		}
		if ep := eps[int(b[1])%len(eps)]; ep != "" {
			if strings.Contains(ep, "%d") {
				ep = strings.Replace(ep, "%d", strconv.Itoa(int(b[1])%50+1), 1)
			}
			ann[mesh.AnnotationEndpoint] = ep
		}
		if ka := kas[int(b[2])%len(kas)]; ka != "" {
			ann[mesh.AnnotationKeepalive] = ka
		}
		out = append(out, mesh.RawNode{
			Name:        name,
			Annotations: ann,
			PodCIDRs:    []string{cidrs[int(b[3])%len(cidrs)]},
			Created:     time.Unix(int64(b[4]%4), 0),
		})
	}
	return out
}

func fuzzKey(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[31] = i+1, 0x55
	return k
}

// FuzzComputeDiff runs Compute and Diff over two successive node lists
// made from the input and applies the diffs to an in-memory device with
// WireGuard's semantics. The desired state must be conflict-free, account
// for every node, and the device must end up exactly as desired, with a
// second Diff empty.
func FuzzComputeDiff(f *testing.F) {
	f.Add([]byte{1, 1, 0, 1, 0, 2, 2, 1, 2, 1}, []byte{1, 1, 0, 1, 0})
	f.Add([]byte{1, 1, 0, 1, 3, 1, 2, 0, 3, 0, 8, 0, 0, 2, 0}, []byte{1, 5, 2, 1, 0, 3, 2, 0, 3, 0})
	f.Add([]byte{0, 1, 1, 1, 1, 2, 3, 3, 4, 1}, []byte{})
	f.Fuzz(func(t *testing.T, first, second []byte) {
		self := mesh.Self{Name: "s", PublicKey: fuzzKey(0), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}}
		dev := meshtest.NewDevice("wgmesh0")
		var known map[string]wgtypes.Key
		for round, data := range [][]byte{first, second} {
			nodes := fuzzNodes(data, "abcdefghs") // "s" collides with self
			have, err := dev.Device()
			if err != nil {
				t.Fatal(err)
			}
			d := mesh.Compute(mesh.Input{Self: self, Nodes: nodes, DefaultKeepalive: 5 * time.Second,
				Configured: mesh.ConfiguredFrom(have), KnownKeys: known})
			checkDesired(t, self, nodes, d)
			cfg := mesh.Diff(d, have, mesh.DiffOptions{GC: true, KnownKeys: known})
			if cfg.ReplacePeers {
				t.Fatal("Diff set ReplacePeers")
			}
			if err := dev.ConfigureDevice(cfg); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			after, _ := dev.Device()
			checkDevice(t, d, after)
			if again := mesh.Diff(d, after, mesh.DiffOptions{GC: true, LastApplied: lastApplied(d)}); !mesh.IsEmpty(again) {
				t.Fatalf("round %d: not converged, second diff %+v", round, again)
			}
			known = map[string]wgtypes.Key{}
			for _, p := range d.Peers {
				known[p.Node] = p.PublicKey
			}
		}
	})
}

func lastApplied(d mesh.Desired) map[wgtypes.Key]netip.AddrPort {
	m := map[wgtypes.Key]netip.AddrPort{}
	for _, p := range d.Peers {
		m[p.PublicKey] = p.Endpoint
	}
	return m
}

func checkDesired(t *testing.T, self mesh.Self, nodes []mesh.RawNode, d mesh.Desired) {
	t.Helper()
	accounted := map[string]int{}
	keys := map[wgtypes.Key]bool{}
	var all []netip.Prefix
	for i, p := range d.Peers {
		accounted[p.Node]++
		if i > 0 && d.Peers[i-1].Node >= p.Node {
			t.Fatalf("peers not sorted by name: %v", d.Peers)
		}
		if p.PublicKey == self.PublicKey || keys[p.PublicKey] {
			t.Fatalf("peer %s has our key or a duplicate key", p.Node)
		}
		keys[p.PublicKey] = true
		for _, q := range p.AllowedIPs {
			for _, o := range all {
				if o.Overlaps(q) {
					t.Fatalf("allowed IPs overlap: %s of %s with %s", q, p.Node, o)
				}
			}
			for _, l := range self.PodCIDRs {
				if l.Overlaps(q) {
					t.Fatalf("peer %s overlaps the local pod CIDR", p.Node)
				}
			}
			all = append(all, q)
		}
	}
	for _, e := range d.Excluded {
		accounted[e.Node]++
		if e.Reason == "" || e.Err == nil {
			t.Fatalf("exclusion without reason: %+v", e)
		}
	}
	for _, n := range nodes {
		if n.Name == self.Name {
			if accounted[n.Name] != 0 {
				t.Fatal("self listed as peer or exclusion")
			}
			continue
		}
		if accounted[n.Name] != 1 {
			t.Fatalf("node %s accounted %d times (peers %v, excluded %v)", n.Name, accounted[n.Name], d.Peers, d.Excluded)
		}
	}
	slices.SortFunc(all, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(all, d.Routes) {
		t.Fatalf("routes %v, want the peers' allowed IPs %v", d.Routes, all)
	}
}

func checkDevice(t *testing.T, d mesh.Desired, dev *wgtypes.Device) {
	t.Helper()
	if len(dev.Peers) != len(d.Peers) {
		t.Fatalf("device has %d peers, desired %d", len(dev.Peers), len(d.Peers))
	}
	byKey := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range dev.Peers {
		byKey[p.PublicKey] = p
	}
	for _, p := range d.Peers {
		got, ok := byKey[p.PublicKey]
		if !ok {
			t.Fatalf("peer %s missing on the device", p.Node)
		}
		var ips []string
		for _, n := range got.AllowedIPs {
			ips = append(ips, n.String())
		}
		var want []string
		for _, q := range p.AllowedIPs {
			want = append(want, (&net.IPNet{IP: q.Addr().AsSlice(), Mask: net.CIDRMask(q.Bits(), q.Addr().BitLen())}).String())
		}
		slices.Sort(ips)
		slices.Sort(want)
		if !slices.Equal(ips, want) {
			t.Fatalf("peer %s allowed IPs %v, want %v", p.Node, ips, want)
		}
		if got.PersistentKeepaliveInterval != p.Keepalive {
			t.Fatalf("peer %s keepalive %s, want %s", p.Node, got.PersistentKeepaliveInterval, p.Keepalive)
		}
		if p.Endpoint.IsValid() && (got.Endpoint == nil || got.Endpoint.AddrPort() != p.Endpoint) {
			t.Fatalf("peer %s endpoint %v, want %v", p.Node, got.Endpoint, p.Endpoint)
		}
	}
}
