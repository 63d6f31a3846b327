package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

func key(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[31] = i, 0x42
	return k
}

// node is a valid peer node i: key(i), 198.51.100.(10+i):51820, 10.244.i.0/24.
func node(i byte) mesh.RawNode {
	return mesh.RawNode{
		Name: fmt.Sprintf("n%d", i),
		Annotations: map[string]string{
			mesh.AnnotationPublicKey: key(i).String(),
			mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:51820", 10+int(i)),
		},
		PodCIDRs:    []string{fmt.Sprintf("10.244.%d.0/24", i)},
		InternalIPs: []string{fmt.Sprintf("198.51.100.%d", 10+int(i))},
	}
}

// selfNode is node 0 as the API shows it before the agent published anything.
func selfNode() mesh.RawNode {
	return mesh.RawNode{Name: "n0", PodCIDRs: []string{"10.244.0.0/24"}, InternalIPs: []string{"198.51.100.10"}}
}

type fixture struct {
	src *meshtest.Source
	dev *meshtest.Device
	dp  *meshtest.Dataplane
	cfg mesh.Config
	r   *mesh.Reconciler
}

func newFixture(t *testing.T, mod func(*mesh.Config), nodes ...mesh.RawNode) *fixture {
	t.Helper()
	f := &fixture{
		src: meshtest.NewSource("n0", nodes...),
		dev: meshtest.NewDevice("wgmesh0"),
		dp:  &meshtest.Dataplane{},
	}
	f.cfg = mesh.Config{
		NodeName:         "n0",
		PublicKey:        key(100),
		ListenPort:       51820,
		DefaultKeepalive: 25 * time.Second,
		MTU:              1420,
		Source:           f.src,
		Device:           f.dev,
		Dataplane:        f.dp,
	}
	if mod != nil {
		mod(&f.cfg)
	}
	f.r = mesh.New(f.cfg)
	return f
}

func (f *fixture) reconcile(t *testing.T) {
	t.Helper()
	if err := f.r.Reconcile(context.Background()); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
}

// peers renders the device as node-ish strings: key byte -> endpoint + allowed IPs.
func (f *fixture) peers(t *testing.T) map[byte]string {
	t.Helper()
	d, err := f.dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	m := map[byte]string{}
	for _, p := range d.Peers {
		var ips []string
		for _, a := range p.AllowedIPs {
			ips = append(ips, a.String())
		}
		m[p.PublicKey[0]] = fmt.Sprintf("%v %s %s", p.Endpoint, p.PersistentKeepaliveInterval, strings.Join(ips, ","))
	}
	return m
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

var cmpNet = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

func TestReconcileLifecycle(t *testing.T) {
	n2 := node(2)
	n2.Annotations[mesh.AnnotationKeepalive] = "0"
	f := newFixture(t, nil, selfNode(), node(1), n2)

	// First pass: publish own annotations, add both peers, apply dataplane.
	f.reconcile(t)
	want := map[byte]string{
		1: "198.51.100.11:51820 25s 10.244.1.0/24",
		2: "198.51.100.12:51820 0s 10.244.2.0/24",
	}
	if diff := cmp.Diff(want, f.peers(t)); diff != "" {
		t.Fatalf("device after join (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]map[string]string{{
		mesh.AnnotationPublicKey: key(100).String(),
		mesh.AnnotationEndpoint:  "198.51.100.10:51820",
	}}, f.src.Published()); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	st, _ := f.dp.Last()
	if diff := cmp.Diff(mesh.DataplaneState{
		LocalPodCIDRs:  pfx("10.244.0.0/24"),
		RemotePodCIDRs: pfx("10.244.1.0/24", "10.244.2.0/24"),
		MTU:            1420,
	}, st, cmpNet); diff != "" {
		t.Errorf("dataplane (-want +got):\n%s", diff)
	}
	if n := len(f.dev.Configs()); n != 1 {
		t.Errorf("%d device writes on join, want 1", n)
	}

	// A no-op resync writes nothing to the device and publishes nothing.
	f.dev.ResetConfigs()
	f.reconcile(t)
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("no-op resync wrote to the device: %+v", c)
	}
	if n := len(f.src.Published()); n != 1 {
		t.Errorf("no-op resync published again (%d publishes)", n)
	}
	if n := len(f.dp.States()); n != 3 {
		t.Errorf("dataplane applied %d times, want every pass (3)", n)
	}

	// Update one node: exactly one write, touching only that peer.
	n1 := node(1)
	n1.Annotations[mesh.AnnotationEndpoint] = "198.51.100.99:51821"
	f.src.Upsert(n1)
	f.reconcile(t)
	cfgs := f.dev.Configs()
	if len(cfgs) != 1 || len(cfgs[0].Peers) != 1 {
		t.Fatalf("update wrote %+v, want one config with one peer", cfgs)
	}
	pc := cfgs[0].Peers[0]
	if pc.PublicKey != key(1) || !pc.UpdateOnly || pc.Endpoint.String() != "198.51.100.99:51821" ||
		pc.ReplaceAllowedIPs || pc.PersistentKeepaliveInterval != nil || cfgs[0].ReplacePeers {
		t.Errorf("update peer config = %+v", pc)
	}

	// WireGuard roams peer 1; resyncs keep the roamed endpoint.
	f.dev.ResetConfigs()
	if err := f.dev.Roam(key(1), netipUDP("203.0.113.9:40000")); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("roamed endpoint was overwritten: %+v", c)
	}
	// ...until the node publishes a new endpoint.
	n1.Annotations[mesh.AnnotationEndpoint] = "198.51.100.98:51821"
	f.src.Upsert(n1)
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.98:51821 25s 10.244.1.0/24" {
		t.Errorf("after published change peer 1 = %q", got)
	}

	// Delete: not garbage-collected before the source has synced.
	f.dev.ResetConfigs()
	f.src.Delete("n2")
	f.src.SetSynced(false)
	f.reconcile(t)
	if _, ok := f.peers(t)[2]; !ok {
		t.Error("peer removed before the source synced")
	}
	st, _ = f.dp.Last()
	if diff := cmp.Diff(pfx("10.244.1.0/24", "10.244.2.0/24"), st.RemotePodCIDRs, cmpNet); diff != "" {
		t.Errorf("routes before sync should keep the device's peers (-want +got):\n%s", diff)
	}
	f.src.SetSynced(true)
	f.reconcile(t)
	if diff := cmp.Diff(map[byte]string{1: "198.51.100.98:51821 25s 10.244.1.0/24"}, f.peers(t)); diff != "" {
		t.Errorf("after delete (-want +got):\n%s", diff)
	}
	cfgs = f.dev.Configs()
	if len(cfgs) != 1 || len(cfgs[0].Peers) != 1 || !cfgs[0].Peers[0].Remove || cfgs[0].Peers[0].PublicKey != key(2) {
		t.Errorf("delete wrote %+v, want one Remove of key 2", cfgs)
	}
	st, _ = f.dp.Last()
	if diff := cmp.Diff(pfx("10.244.1.0/24"), st.RemotePodCIDRs, cmpNet); diff != "" {
		t.Errorf("routes after delete (-want +got):\n%s", diff)
	}

	s := f.r.Status()
	if s.Err != nil || !s.Synced || !s.SelfFound || len(s.Peers) != 1 || s.Peers[0].Node != "n1" || s.LastReconcile.IsZero() {
		t.Errorf("status = %+v", s)
	}
}

func netipUDP(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func TestReconcileBadNode(t *testing.T) {
	bad := node(3)
	bad.Annotations[mesh.AnnotationPublicKey] = "garbage"
	dup := node(4)
	dup.Annotations[mesh.AnnotationPublicKey] = key(1).String()
	dup.Created = time.Now() // younger than n1 (zero time)
	f := newFixture(t, nil, selfNode(), node(1), node(2), bad, dup)
	f.reconcile(t)

	if diff := cmp.Diff(map[byte]string{
		1: "198.51.100.11:51820 25s 10.244.1.0/24",
		2: "198.51.100.12:51820 25s 10.244.2.0/24",
	}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	w := f.src.Warnings()
	if len(w) != 2 || w[0].Node != "n3" || w[0].Reason != string(mesh.ReasonBadPublicKey) ||
		w[1].Node != "n4" || w[1].Reason != string(mesh.ReasonDuplicateKey) || !strings.Contains(w[1].Message, `"n1"`) {
		t.Fatalf("warnings = %+v", w)
	}

	// Resyncs do not repeat events.
	f.reconcile(t)
	f.reconcile(t)
	if n := len(f.src.Warnings()); n != 2 {
		t.Errorf("%d warnings after resyncs, want 2", n)
	}

	// Fixing the node adds it, touching no other peer.
	f.dev.ResetConfigs()
	f.src.Upsert(node(3))
	f.reconcile(t)
	cfgs := f.dev.Configs()
	if len(cfgs) != 1 || len(cfgs[0].Peers) != 1 || cfgs[0].Peers[0].PublicKey != key(3) || cfgs[0].Peers[0].UpdateOnly {
		t.Errorf("fixing n3 wrote %+v", cfgs)
	}
	// Breaking it again in a new way warns again (once), and removes it.
	broken := node(3)
	broken.PodCIDRs = []string{"10.244.3.7/24"}
	f.src.Upsert(broken)
	f.reconcile(t)
	f.reconcile(t)
	w = f.src.Warnings()
	if len(w) != 3 || w[2].Node != "n3" || w[2].Reason != string(mesh.ReasonBadPodCIDR) || !strings.Contains(w[2].Message, "10.244.3.0/24") {
		t.Errorf("warnings = %+v", w)
	}
	if _, ok := f.peers(t)[3]; ok {
		t.Error("broken n3 still a peer")
	}
	s := f.r.Status()
	var ex []string
	for _, e := range s.Excluded {
		ex = append(ex, e.Node+":"+string(e.Reason))
	}
	if diff := cmp.Diff([]string{"n3:bad-pod-cidr", "n4:duplicate-public-key"}, ex); diff != "" {
		t.Errorf("status exclusions (-want +got):\n%s", diff)
	}
}

func TestReconcileOwnAnnotations(t *testing.T) {
	t.Run("re-published after someone changes them", func(t *testing.T) {
		f := newFixture(t, nil, selfNode())
		f.reconcile(t)
		nodes, _ := f.src.Nodes()
		tampered := nodes[0]
		tampered.Annotations[mesh.AnnotationEndpoint] = "198.51.100.200:1"
		f.src.Upsert(tampered)
		f.reconcile(t)
		p := f.src.Published()
		if diff := cmp.Diff([]map[string]string{
			{mesh.AnnotationPublicKey: key(100).String(), mesh.AnnotationEndpoint: "198.51.100.10:51820"},
			{mesh.AnnotationEndpoint: "198.51.100.10:51820"},
		}, p); diff != "" {
			t.Errorf("published (-want +got):\n%s", diff)
		}
	})
	t.Run("a patch not yet in the cache is not repeated", func(t *testing.T) {
		f := newFixture(t, nil, selfNode())
		f.src.HoldPublishes = true
		f.reconcile(t)
		f.reconcile(t)
		if n := len(f.src.Published()); n != 1 {
			t.Errorf("%d publishes while the first is in flight, want 1", n)
		}
		// A newer version of the Node still without our values means our
		// patch was lost or overwritten: publish again.
		f.src.Upsert(selfNode())
		f.reconcile(t)
		if n := len(f.src.Published()); n != 2 {
			t.Errorf("%d publishes after the Node changed, want 2", n)
		}
	})
	t.Run("override", func(t *testing.T) {
		f := newFixture(t, func(c *mesh.Config) { c.EndpointOverride = "[2001:db8::10]:4000" }, selfNode())
		f.reconcile(t)
		if got := f.src.Published()[0][mesh.AnnotationEndpoint]; got != "[2001:db8::10]:4000" {
			t.Errorf("published endpoint %q", got)
		}
	})
	t.Run("no InternalIP: key only", func(t *testing.T) {
		self := selfNode()
		self.InternalIPs = nil
		f := newFixture(t, nil, self, node(1))
		f.reconcile(t)
		if diff := cmp.Diff([]map[string]string{{mesh.AnnotationPublicKey: key(100).String()}}, f.src.Published()); diff != "" {
			t.Errorf("published (-want +got):\n%s", diff)
		}
		if _, ok := f.peers(t)[1]; !ok {
			t.Error("peers not configured")
		}
	})
	t.Run("self not listed: peers still configured", func(t *testing.T) {
		f := newFixture(t, nil, node(1))
		f.reconcile(t)
		if len(f.src.Published()) != 0 {
			t.Error("published without an own Node")
		}
		if _, ok := f.peers(t)[1]; !ok {
			t.Error("peers not configured")
		}
		if f.r.Status().SelfFound {
			t.Error("status says self found")
		}
	})
	t.Run("publish failure does not block the mesh", func(t *testing.T) {
		f := newFixture(t, nil, selfNode(), node(1))
		f.src.PublishErr = errors.New("forbidden")
		err := f.r.Reconcile(context.Background())
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("Reconcile error = %v", err)
		}
		if _, ok := f.peers(t)[1]; !ok {
			t.Error("peers not configured")
		}
	})
}

func TestReconcileErrors(t *testing.T) {
	boom := errors.New("boom")

	f := newFixture(t, nil, selfNode(), node(1))
	f.dev.DeviceErr = boom
	if err := f.r.Reconcile(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("device read error = %v", err)
	}
	if len(f.dp.States()) != 0 {
		t.Error("dataplane applied without a device")
	}
	f.dev.DeviceErr = nil
	f.dev.ConfigureErr = boom
	if err := f.r.Reconcile(context.Background()); !errors.Is(err, boom) || !strings.Contains(err.Error(), "configure device") {
		t.Fatalf("configure error = %v", err)
	}
	if s := f.r.Status(); !errors.Is(s.Err, boom) || s.Errors != 2 || s.Reconciles != 2 {
		t.Errorf("status = %+v", s)
	}
	f.dev.ConfigureErr = nil
	f.dp.Err = boom
	if err := f.r.Reconcile(context.Background()); !errors.Is(err, boom) || !strings.Contains(err.Error(), "dataplane") {
		t.Fatalf("dataplane error = %v", err)
	}
	if _, ok := f.peers(t)[1]; !ok {
		t.Error("dataplane failure prevented device configuration")
	}
	f.dp.Err = nil
	f.src.ListErr = boom
	if err := f.r.Reconcile(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("list error = %v", err)
	}
	f.src.ListErr = nil
	f.reconcile(t)
	if s := f.r.Status(); s.Err != nil || s.Errors != 4 {
		t.Errorf("status after recovery = %+v", s)
	}
}

type resolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	calls   int
}

func (r *resolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if a, ok := r.answers[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestReconcileResolver(t *testing.T) {
	res := &resolver{answers: map[string][]netip.Addr{"wg1.example.org": {netip.MustParseAddr("198.51.100.71")}}}
	n1 := node(1)
	n1.Annotations[mesh.AnnotationEndpoint] = "wg1.example.org:51820"
	n2 := node(2)
	n2.Annotations[mesh.AnnotationEndpoint] = "nowhere.example.org:51820"
	f := newFixture(t, func(c *mesh.Config) { c.Resolver = res }, selfNode(), n1, n2)
	f.reconcile(t)
	if diff := cmp.Diff(map[byte]string{
		1: "198.51.100.71:51820 25s 10.244.1.0/24",
		2: "<nil> 25s 10.244.2.0/24", // kept without endpoint: it can still reach us
	}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	if w := f.src.Warnings(); len(w) != 1 || w[0].Reason != string(mesh.ReasonUnresolvable) {
		t.Errorf("warnings = %+v", w)
	}

	// DNS outage: the last good address is kept, no device write.
	f.dev.ResetConfigs()
	res.mu.Lock()
	res.answers = nil
	calls := res.calls
	res.mu.Unlock()
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("DNS failure changed the device: %+v", c)
	}
	if res.calls != calls+2 {
		t.Errorf("resolver called %d times on resync, want 2 (re-resolve each pass)", res.calls-calls)
	}
	// A new answer moves the endpoint.
	res.mu.Lock()
	res.answers = map[string][]netip.Addr{"wg1.example.org": {netip.MustParseAddr("198.51.100.72")}}
	res.mu.Unlock()
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.72:51820 25s 10.244.1.0/24" {
		t.Errorf("peer 1 = %q", got)
	}
}

func TestReconcileIncumbentWins(t *testing.T) {
	// n1 is configured; n9 appears later but claims to be older with an
	// overlapping CIDR. n1 keeps its place.
	f := newFixture(t, nil, selfNode(), node(1))
	f.reconcile(t)
	n9 := node(9)
	n9.PodCIDRs = []string{"10.244.1.0/25"}
	n9.Created = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	node1 := node(1)
	node1.Created = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	f.src.Upsert(node1)
	f.src.Upsert(n9)
	f.dev.ResetConfigs()
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("newcomer disturbed the incumbent: %+v", c)
	}
	if w := f.src.Warnings(); len(w) != 1 || w[0].Node != "n9" || w[0].Reason != string(mesh.ReasonOverlappingCIDR) {
		t.Errorf("warnings = %+v", w)
	}
}

func TestRun(t *testing.T) {
	var mu sync.Mutex
	var statuses []mesh.Status
	f := newFixture(t, func(c *mesh.Config) {
		c.Resync = time.Hour // only change signals drive passes here
		c.OnReconcile = func(s mesh.Status) { mu.Lock(); statuses = append(statuses, s); mu.Unlock() }
	}, selfNode())
	f.src.SetSynced(false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()

	// Not synced: no pass yet.
	time.Sleep(50 * time.Millisecond)
	if n := len(f.dp.States()); n != 0 {
		t.Fatalf("%d passes before sync", n)
	}
	f.src.Upsert(node(1))
	f.src.SetSynced(true)
	waitFor(t, func() bool { _, ok := f.peers(t)[1]; return ok })
	f.src.Upsert(node(2))
	waitFor(t, func() bool { _, ok := f.peers(t)[2]; return ok })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(statuses) == 0 || len(statuses[len(statuses)-1].Peers) != 2 {
		t.Errorf("OnReconcile statuses = %d, last %+v", len(statuses), statuses)
	}
}

func TestRunInvalidConfig(t *testing.T) {
	err := mesh.New(mesh.Config{}).Run(context.Background())
	if !errors.Is(err, mesh.ErrInvalidConfig) {
		t.Fatalf("Run with empty config = %v", err)
	}
	for _, want := range []string{"node name", "public key", "listen port", "node source", "device", "dataplane"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	f := newFixture(t, func(c *mesh.Config) { c.EndpointOverride = "nope"; c.DefaultKeepalive = 1500 * time.Millisecond })
	if err := f.cfg.Validate(); err == nil || !strings.Contains(err.Error(), "endpoint override") || !strings.Contains(err.Error(), "keepalive") {
		t.Errorf("Validate = %v", err)
	}
}

// run starts f's Run for the rest of t; t's clean-up cancels it and waits
// for it to return.
func (f *fixture) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIncumbencySurvivesRestart: n1 is on the device; while the agent is
// down n1 rotates its key and an older node n9 claims part of n1's pod
// CIDR. The restarted agent finds only n1's old key on the device (restored
// from its state file); with the node→key record restored too, n1 keeps its
// place, and without it the impostor would take it.
func TestIncumbencySurvivesRestart(t *testing.T) {
	for _, tt := range []struct {
		name      string
		restored  map[string]wgtypes.Key
		winner    string
		excluded  string
		winnerKey wgtypes.Key
	}{
		{name: "known keys restored", restored: map[string]wgtypes.Key{"n1": key(1)}, winner: "n1", excluded: "n9", winnerKey: key(11)},
		{name: "nothing restored", restored: nil, winner: "n9", excluded: "n1", winnerKey: key(9)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			first := newFixture(t, nil, selfNode(), node(1))
			first.reconcile(t)

			rotated := node(1)
			rotated.Annotations[mesh.AnnotationPublicKey] = key(11).String()
			rotated.Created = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			n9 := node(9)
			n9.PodCIDRs = []string{"10.244.1.0/25"}
			n9.Created = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

			// The restarted agent: same device (its peers restored), a
			// fresh reconciler seeded from the state file.
			src := meshtest.NewSource("n0", selfNode(), rotated, n9)
			cfg := first.cfg
			cfg.Source = src
			cfg.KnownKeys = tt.restored
			r := mesh.New(cfg)
			if err := r.Reconcile(context.Background()); err != nil {
				t.Fatalf("Reconcile: %v", err)
			}
			st := r.Status()
			if len(st.Peers) != 1 || st.Peers[0].Node != tt.winner || st.Peers[0].PublicKey != tt.winnerKey {
				t.Fatalf("peers = %+v, want only %s with key %s", st.Peers, tt.winner, tt.winnerKey)
			}
			if len(st.Excluded) != 1 || st.Excluded[0].Node != tt.excluded || st.Excluded[0].Reason != mesh.ReasonOverlappingCIDR {
				t.Errorf("excluded = %+v, want %s (overlapping CIDR)", st.Excluded, tt.excluded)
			}
		})
	}
}
