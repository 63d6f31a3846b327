package mesh_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// readCounter counts full device reads, to tell incremental passes (which
// use the snapshot) from full ones.
type readCounter struct {
	fake  *meshtest.Device
	reads int
}

func (d *readCounter) Device() (*wgtypes.Device, error) {
	d.reads++
	return d.fake.Device()
}

func (d *readCounter) ConfigureDevice(c wgtypes.Config) error { return d.fake.ConfigureDevice(c) }

// twin is one reconciler over its own source, device and dataplane.
type twin struct {
	src *meshtest.Source
	dev *readCounter
	dp  *meshtest.Dataplane
	r   *mesh.Reconciler
}

func newTwin(res mesh.Resolver, nodes []mesh.RawNode) *twin {
	t := &twin{src: meshtest.NewSource("n0", nodes...), dev: &readCounter{fake: meshtest.NewDevice("wgmesh0")}, dp: &meshtest.Dataplane{}}
	t.r = mesh.New(mesh.Config{NodeName: "n0", PublicKey: key(100), ListenPort: 51820, DefaultKeepalive: 25 * time.Second,
		MTU: 1420, Source: t.src, Device: t.dev, Dataplane: t.dp, Resolver: res})
	return t
}

// TestIncrementalMatchesFull drives two reconcilers through the same random
// sequences of Node changes (endpoints, keepalives, keys, pod CIDRs,
// conflicts, broken annotations, joins, deletions, roaming, the source's
// sync state): one reconciles each change as a change signal does (the
// incremental path where it applies, and a full pass now and then as the
// resync does), the other always runs full passes. Status, device and
// dataplane must agree after every step, and the incremental path must
// actually have been taken.
func TestIncrementalMatchesFull(t *testing.T) {
	ctx := context.Background()
	res := &resolver{answers: map[string][]netip.Addr{
		"a.example.org": {netip.MustParseAddr("198.51.100.201")},
		"b.example.org": {netip.MustParseAddr("198.51.100.202")},
	}}
	incrementalPasses := 0
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		const n = 12
		nodes := []mesh.RawNode{selfNode()}
		for i := byte(1); i <= n; i++ {
			nodes = append(nodes, node(i))
		}
		inc, full := newTwin(res, nodes), newTwin(res, nodes)
		for _, tw := range []*twin{inc, full} {
			if err := tw.r.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for step := range 60 {
			what := mutate(rng, inc, full, n)
			readsBefore := inc.dev.reads
			var errInc error
			if rng.IntN(8) == 0 {
				errInc = inc.r.Reconcile(ctx) // the periodic resync
			} else {
				errInc = inc.r.ReconcileChanged(ctx)
				took := inc.dev.reads == readsBefore
				if took {
					incrementalPasses++
				}
				if got := inc.r.Status().Incremental; got != took {
					t.Fatalf("seed %d step %d (%s): Status.Incremental %v, device read %v", seed, step, what, got, !took)
				}
			}
			errFull := full.r.Reconcile(ctx)
			if (errInc == nil) != (errFull == nil) {
				t.Fatalf("seed %d step %d (%s): incremental err %v, full err %v", seed, step, what, errInc, errFull)
			}
			compareTwins(t, fmt.Sprintf("seed %d step %d (%s)", seed, step, what), inc, full)
		}
	}
	t.Logf("%d passes took the incremental path", incrementalPasses)
	// Endpoint and keepalive edits are about a third of the changes.
	if incrementalPasses < 200 {
		t.Errorf("only %d passes took the incremental path", incrementalPasses)
	}
}

// mutate applies one random change to both twins alike and says what it was.
func mutate(rng *rand.Rand, a, b *twin, n int) string {
	i := byte(1 + rng.IntN(n))
	name := fmt.Sprintf("n%d", i)
	cur, ok := rawNamed(a.src, name)
	if !ok {
		cur = node(i)
	}
	cur.Annotations = cloneMap(cur.Annotations)
	cur.PodCIDRs = slices.Clone(cur.PodCIDRs)
	var what string
	switch rng.IntN(15) {
	case 0, 1, 2:
		what = "endpoint port"
		cur.Annotations[mesh.AnnotationEndpoint] = fmt.Sprintf("198.51.100.%d:%d", 10+int(i), 51820+rng.IntN(3))
	case 3:
		what = "endpoint name"
		cur.Annotations[mesh.AnnotationEndpoint] = []string{"a.example.org:51820", "b.example.org:51820", "nxdomain.example.org:51820"}[rng.IntN(3)]
	case 4, 5:
		what = "keepalive"
		if rng.IntN(3) == 0 {
			delete(cur.Annotations, mesh.AnnotationKeepalive)
		} else {
			cur.Annotations[mesh.AnnotationKeepalive] = fmt.Sprint(rng.IntN(3) * 10)
		}
	case 6:
		what = "key"
		cur.Annotations[mesh.AnnotationPublicKey] = key(byte(1 + rng.IntN(n+3))).String()
	case 7:
		what = "pod cidr"
		cur.PodCIDRs = []string{[]string{"10.244.%d.0/24", "10.244.%d.0/25", "10.244.0.0/16", "10.244.%d.0/23"}[rng.IntN(4)]}
		if strings.Contains(cur.PodCIDRs[0], "%d") {
			cur.PodCIDRs[0] = fmt.Sprintf(cur.PodCIDRs[0], 1+rng.IntN(n))
		}
	case 8:
		what = "broken key"
		cur.Annotations[mesh.AnnotationPublicKey] = "not-a-key"
	case 9:
		what = "delete"
		a.src.Delete(name)
		b.src.Delete(name)
		return what
	case 10:
		what = "roam"
		addr := &net.UDPAddr{IP: net.IPv4(203, 0, 113, byte(rng.IntN(4))), Port: 40000}
		k, _ := mesh.ParsePublicKey(cur.Annotations[mesh.AnnotationPublicKey])
		// Only where both have the peer; an error means neither has.
		if a.dev.fake.Roam(k, addr) == nil {
			b.dev.fake.Roam(k, addr)
		}
		return what
	case 12:
		what = "location"
		cur.Labels = map[string]string{mesh.LabelZone: []string{"a", "b", ""}[rng.IntN(3)]}
	case 13:
		what = "private endpoint"
		cur.Annotations[mesh.AnnotationPrivateEndpoint] = []string{
			fmt.Sprintf("203.0.113.%d:51820", 10+int(i)), "", "bad-private-endpoint"}[rng.IntN(3)]
	case 14:
		// Our own location decides which peers are location-mates.
		what = "self location"
		self, _ := rawNamed(a.src, "n0")
		self.Labels = map[string]string{mesh.LabelZone: []string{"a", "b", ""}[rng.IntN(3)]}
		a.src.Upsert(self)
		b.src.Upsert(self)
		return what
	case 11:
		what = "resource version only"
		cur.ResourceVersion = fmt.Sprint(rng.Int())
		if rng.IntN(4) == 0 {
			what = "sync state"
			synced := rng.IntN(2) == 0
			a.src.SetSynced(synced)
			b.src.SetSynced(synced)
		}
	}
	a.src.Upsert(cur)
	b.src.Upsert(cur)
	return what
}

func rawNamed(s *meshtest.Source, name string) (mesh.RawNode, bool) {
	nodes, _ := s.Nodes()
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return mesh.RawNode{}, false
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func compareTwins(t *testing.T, what string, a, b *twin) {
	t.Helper()
	sa, sb := a.r.Status(), b.r.Status()
	opts := cmp.Options{
		cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
		cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y }),
		cmp.Comparer(func(x, y error) bool { return (x == nil) == (y == nil) && (x == nil || x.Error() == y.Error()) }),
	}
	for _, c := range []struct {
		name string
		x, y any
	}{
		{"peers", sa.Peers, sb.Peers},
		{"excluded", sa.Excluded, sb.Excluded},
		{"degraded", sa.Degraded, sb.Degraded},
		{"routes", sa.Routes, sb.Routes},
		{"device", devicePeers(t, a.dev), devicePeers(t, b.dev)},
		{"dataplane", lastState(a.dp), lastState(b.dp)},
	} {
		if diff := cmp.Diff(c.y, c.x, opts); diff != "" {
			t.Fatalf("%s: %s differ (-full +incremental):\n%s", what, c.name, diff)
		}
	}
}

func devicePeers(t *testing.T, d *readCounter) []string {
	t.Helper()
	dev, err := d.fake.Device()
	if err != nil {
		t.Fatal(err)
	}
	peers := slices.Clone(dev.Peers)
	slices.SortFunc(peers, func(x, y wgtypes.Peer) int { return bytes.Compare(x.PublicKey[:], y.PublicKey[:]) })
	var out []string
	for _, p := range peers {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		slices.Sort(ips)
		out = append(out, fmt.Sprintf("%s ep=%v ka=%s ips=%v", p.PublicKey, p.Endpoint, p.PersistentKeepaliveInterval, ips))
	}
	return out
}

func lastState(d *meshtest.Dataplane) mesh.DataplaneState {
	s, _ := d.Last()
	return s
}
