package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// keyStore is an in-memory mesh.KeyStore that records every saved key.
type keyStore struct {
	mu    sync.Mutex
	saved []wgtypes.Key
	err   error
}

func (k *keyStore) Save(key wgtypes.Key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.err != nil {
		return k.err
	}
	k.saved = append(k.saved, key)
	return nil
}

func (k *keyStore) Saved() []wgtypes.Key {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]wgtypes.Key(nil), k.saved...)
}

// privKeys hands out private keys priv(1), priv(2), ... in order.
type privKeys struct{ n byte }

func priv(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[1] = 0x70, i
	return k
}

func (p *privKeys) next() (wgtypes.Key, error) {
	p.n++
	return priv(p.n), nil
}

// rotationFixture is node n0 (key(100)) with peer n1, a key store and a
// deterministic key generator, after one converged pass.
func rotationFixture(t *testing.T) (*fixture, *keyStore) {
	t.Helper()
	ks := &keyStore{}
	gen := &privKeys{}
	f := newFixture(t, func(c *mesh.Config) {
		c.Keys = ks
		c.GenerateKey = gen.next
	}, selfNode(), node(1))
	f.reconcile(t)
	f.dev.ResetConfigs()
	return f, ks
}

// requestRotation sets the rotate-key annotation on n0 as an operator would.
func requestRotation(t *testing.T, f *fixture, nonce string) {
	t.Helper()
	nodes, err := f.src.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "n0" {
			n.Annotations[mesh.AnnotationRotateKey] = nonce
			f.src.Upsert(n)
			return
		}
	}
	t.Fatal("n0 not listed")
}

func TestReconcileRotateKey(t *testing.T) {
	f, ks := rotationFixture(t)
	before := f.peers(t)
	published := len(f.src.Published())

	requestRotation(t, f, "r1")
	f.reconcile(t)

	newPub := priv(1).PublicKey()
	if diff := cmp.Diff([]wgtypes.Key{priv(1)}, ks.Saved()); diff != "" {
		t.Errorf("saved keys (-want +got):\n%s", diff)
	}
	// The device got the new private key in a write of its own that
	// touches no peer: sessions' peers and endpoints stay. A second write
	// only toggles each peer's keepalive, so that the device initiates
	// with the new key before it is published (see spendHandshakes).
	cfgs := f.dev.Configs()
	if len(cfgs) != 2 || cfgs[0].PrivateKey == nil || *cfgs[0].PrivateKey != priv(1) ||
		len(cfgs[0].Peers) != 0 || cfgs[0].ReplacePeers || cfgs[0].ListenPort != nil {
		t.Fatalf("device writes = %d, want the private key alone first, then the handshake kick", len(cfgs))
	}
	if got := describePeerConfigs(cfgs[1]); !cmp.Equal(got, []string{"1 update=true remove=false ka=0s ips=0", "1 update=true remove=false ka=25s ips=0"}) ||
		cfgs[1].PrivateKey != nil || cfgs[1].ReplacePeers {
		t.Errorf("second write %v, want peer 1's keepalive off and on again", got)
	}
	dev, _ := f.dev.Device()
	if dev.PublicKey != newPub {
		t.Errorf("device public key %s, want %s", dev.PublicKey, newPub)
	}
	if diff := cmp.Diff(before, f.peers(t)); diff != "" {
		t.Errorf("peers changed by the rotation (-before +after):\n%s", diff)
	}
	// New key and the answer go out in one patch.
	p := f.src.Published()[published:]
	if diff := cmp.Diff([]map[string]string{{
		mesh.AnnotationPublicKey:  newPub.String(),
		mesh.AnnotationKeyRotated: "r1",
	}}, p); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	if got := f.r.PublicKey(); got != newPub {
		t.Errorf("PublicKey() = %s, want %s", got, newPub)
	}
	if got := f.r.Status().PublicKey; got != newPub {
		t.Errorf("Status().PublicKey = %s, want %s", got, newPub)
	}

	// Answered: later passes neither rotate nor publish.
	f.dev.ResetConfigs()
	f.reconcile(t)
	f.reconcile(t)
	if n := len(ks.Saved()); n != 1 {
		t.Errorf("%d keys saved after the request was answered, want 1", n)
	}
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("device written after convergence: %+v", c)
	}
	if n := len(f.src.Published()); n != published+1 {
		t.Errorf("%d publishes, want %d", n, published+1)
	}

	// A new request rotates again.
	requestRotation(t, f, "r2")
	f.reconcile(t)
	if diff := cmp.Diff([]wgtypes.Key{priv(1), priv(2)}, ks.Saved()); diff != "" {
		t.Errorf("saved keys (-want +got):\n%s", diff)
	}
	if got := f.r.PublicKey(); got != priv(2).PublicKey() {
		t.Errorf("PublicKey() after the second rotation = %s", got)
	}
	last := f.src.Published()[len(f.src.Published())-1]
	if last[mesh.AnnotationPublicKey] != priv(2).PublicKey().String() || last[mesh.AnnotationKeyRotated] != "r2" {
		t.Errorf("second rotation published %v", last)
	}
}

func TestReconcileRotateKeyAnswerInFlight(t *testing.T) {
	// Our patch has not reached the cache yet: the request still looks
	// unanswered there, but it must not rotate a second time.
	f, ks := rotationFixture(t)
	requestRotation(t, f, "r1")
	f.src.HoldPublishes = true
	f.reconcile(t)
	f.reconcile(t)
	if n := len(ks.Saved()); n != 1 {
		t.Errorf("%d rotations for one request, want 1", n)
	}
}

func TestReconcileRotateKeyFailures(t *testing.T) {
	boom := errors.New("disk full")
	t.Run("store fails: nothing changes, retried", func(t *testing.T) {
		f, ks := rotationFixture(t)
		published := len(f.src.Published())
		requestRotation(t, f, "r1")
		ks.err = boom
		err := f.r.Reconcile(context.Background())
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "rotate key") {
			t.Fatalf("Reconcile error = %v", err)
		}
		if c := f.dev.Configs(); len(c) != 0 {
			t.Errorf("device written although the key was not stored: %+v", c)
		}
		if f.r.PublicKey() != key(100) || len(f.src.Published()) != published {
			t.Errorf("key %s changed or published without a stored key", f.r.PublicKey())
		}
		if _, ok := f.peers(t)[1]; !ok {
			t.Error("a failed rotation disturbed the peers")
		}
		ks.err = nil
		f.reconcile(t)
		if f.r.PublicKey() == key(100) {
			t.Error("rotation not retried after the store recovered")
		}
	})
	t.Run("device fails: old key stays published, retried", func(t *testing.T) {
		f, ks := rotationFixture(t)
		published := len(f.src.Published())
		requestRotation(t, f, "r1")
		f.dev.ConfigureErr = boom
		err := f.r.Reconcile(context.Background())
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "private key on the device") {
			t.Fatalf("Reconcile error = %v", err)
		}
		if f.r.PublicKey() != key(100) || len(f.src.Published()) != published {
			t.Error("published a key the device does not use")
		}
		f.dev.ConfigureErr = nil
		f.reconcile(t)
		// The retry made a fresh key: the one stored by the failed
		// attempt never went into use.
		if diff := cmp.Diff([]wgtypes.Key{priv(1), priv(2)}, ks.Saved()); diff != "" {
			t.Errorf("saved keys (-want +got):\n%s", diff)
		}
		if dev, _ := f.dev.Device(); dev.PublicKey != priv(2).PublicKey() || f.r.PublicKey() != priv(2).PublicKey() {
			t.Errorf("device %s, reconciler %s, want %s", dev.PublicKey, f.r.PublicKey(), priv(2).PublicKey())
		}
	})
	t.Run("publish fails: retried with the new key", func(t *testing.T) {
		f, ks := rotationFixture(t)
		requestRotation(t, f, "r1")
		f.src.PublishErr = errors.New("apiserver down")
		if err := f.r.Reconcile(context.Background()); err == nil {
			t.Fatal("publish error not reported")
		}
		f.src.PublishErr = nil
		f.reconcile(t)
		last := f.src.Published()[len(f.src.Published())-1]
		if last[mesh.AnnotationPublicKey] != priv(1).PublicKey().String() || last[mesh.AnnotationKeyRotated] != "r1" {
			t.Errorf("published %v", last)
		}
		if n := len(ks.Saved()); n != 1 {
			t.Errorf("%d rotations, want 1", n)
		}
	})
	t.Run("generator fails", func(t *testing.T) {
		f := newFixture(t, func(c *mesh.Config) {
			c.Keys = &keyStore{}
			c.GenerateKey = func() (wgtypes.Key, error) { return wgtypes.Key{}, boom }
		}, selfNode())
		f.reconcile(t)
		requestRotation(t, f, "r1")
		if err := f.r.Reconcile(context.Background()); !errors.Is(err, boom) {
			t.Fatalf("Reconcile error = %v", err)
		}
	})
}

func TestReconcileRotateKeyIgnored(t *testing.T) {
	for _, tc := range []struct {
		name  string
		keys  mesh.KeyStore
		nonce string
		warn  string
	}{
		{"no key store", nil, "r1", "no key store"},
		{"request too long", &keyStore{}, strings.Repeat("x", 300), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs strings.Builder
			f := newFixture(t, func(c *mesh.Config) {
				c.Keys = tc.keys
				c.Logger = newTestLogger(&logs)
			}, selfNode(), node(1))
			f.reconcile(t)
			requestRotation(t, f, tc.nonce)
			f.reconcile(t)
			f.reconcile(t)
			if f.r.PublicKey() != key(100) {
				t.Error("key rotated")
			}
			if n := strings.Count(logs.String(), tc.warn); n != 1 {
				t.Errorf("warning %q logged %d times, want once:\n%s", tc.warn, n, logs.String())
			}
		})
	}
}

// TestReconcilePeerKeyChanged is the other side of a rotation: a peer
// node's key changes. The old peer goes and the new one comes with the
// same endpoint, allowed IPs and keepalive, in one device write, the new
// peer first so that its allowed IPs never lack an owner.
func TestReconcilePeerKeyChanged(t *testing.T) {
	f := newFixture(t, nil, selfNode(), node(1), node(2))
	f.reconcile(t)
	f.dev.ResetConfigs()

	n1 := node(1)
	n1.Annotations[mesh.AnnotationPublicKey] = key(51).String()
	f.src.Upsert(n1)
	f.reconcile(t)

	if diff := cmp.Diff(map[byte]string{
		51: "198.51.100.11:51820 25s 10.244.1.0/24",
		2:  "198.51.100.12:51820 25s 10.244.2.0/24",
	}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	cfgs := f.dev.Configs()
	if len(cfgs) != 1 {
		t.Fatalf("%d device writes, want 1: %+v", len(cfgs), cfgs)
	}
	var order []string
	for _, pc := range cfgs[0].Peers {
		switch {
		case pc.Remove:
			order = append(order, "remove "+pc.PublicKey.String())
		default:
			order = append(order, "add "+pc.PublicKey.String())
		}
	}
	if diff := cmp.Diff([]string{"add " + key(51).String(), "remove " + key(1).String()}, order); diff != "" {
		t.Errorf("peer changes (-want +got):\n%s", diff)
	}
	if len(f.src.Warnings()) != 0 {
		t.Errorf("a key change raised warnings: %+v", f.src.Warnings())
	}
	if st, _ := f.dp.Last(); !cmp.Equal(st.RemotePodCIDRs, pfx("10.244.1.0/24", "10.244.2.0/24"), cmpNet) {
		t.Errorf("routes = %v", st.RemotePodCIDRs)
	}
}

// TestReconcilePeerKeyChangedKeepsIncumbency: a rotating node stays the
// incumbent of its pod CIDR against an older node that claims the same
// range (incumbent wins over age), instead of being cut off by its own
// rotation.
func TestReconcilePeerKeyChangedKeepsIncumbency(t *testing.T) {
	n1 := node(1)
	n1.Created = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	f := newFixture(t, nil, selfNode(), n1)
	f.reconcile(t)
	// An older node with an overlapping CIDR shows up: excluded, n1 is
	// configured.
	n9 := node(9)
	n9.PodCIDRs = []string{"10.244.1.0/25"}
	n9.Created = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	f.src.Upsert(n9)
	f.reconcile(t)
	// n1 rotates.
	n1.Annotations[mesh.AnnotationPublicKey] = key(51).String()
	f.src.Upsert(n1)
	f.reconcile(t)
	if diff := cmp.Diff(map[byte]string{51: "198.51.100.11:51820 25s 10.244.1.0/24"}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	ex := f.r.Status().Excluded
	if len(ex) != 1 || ex[0].Node != "n9" || ex[0].Reason != mesh.ReasonOverlappingCIDR {
		t.Errorf("excluded = %+v, want n9 for overlap", ex)
	}
}

// TestReconcileRotationResolvesDuplicateKey: two nodes with the same key
// (a cloned disk image) leave the newcomer out; once one of them rotates,
// both are peers.
func TestReconcileRotationResolvesDuplicateKey(t *testing.T) {
	clone := node(2)
	clone.Annotations[mesh.AnnotationPublicKey] = key(1).String()
	clone.Created = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f := newFixture(t, nil, selfNode(), node(1), clone)
	f.reconcile(t)
	if ex := f.r.Status().Excluded; len(ex) != 1 || ex[0].Node != "n2" || ex[0].Reason != mesh.ReasonDuplicateKey {
		t.Fatalf("excluded = %+v, want n2 for a duplicate key", ex)
	}
	t.Run("newcomer rotates", func(t *testing.T) {
		clone.Annotations[mesh.AnnotationPublicKey] = key(52).String()
		f.src.Upsert(clone)
		f.reconcile(t)
		if diff := cmp.Diff(map[byte]string{
			1:  "198.51.100.11:51820 25s 10.244.1.0/24",
			52: "198.51.100.12:51820 25s 10.244.2.0/24",
		}, f.peers(t)); diff != "" {
			t.Errorf("device (-want +got):\n%s", diff)
		}
	})
	t.Run("incumbent rotates", func(t *testing.T) {
		g := newFixture(t, nil, selfNode(), node(1), clone)
		clone.Annotations[mesh.AnnotationPublicKey] = key(1).String()
		g.src.Upsert(clone)
		g.reconcile(t)
		n1 := node(1)
		n1.Annotations[mesh.AnnotationPublicKey] = key(51).String()
		g.src.Upsert(n1)
		g.reconcile(t)
		// The clone keeps the old key, which now belongs to it alone.
		if diff := cmp.Diff(map[byte]string{
			51: "198.51.100.11:51820 25s 10.244.1.0/24",
			1:  "198.51.100.12:51820 25s 10.244.2.0/24",
		}, g.peers(t)); diff != "" {
			t.Errorf("device (-want +got):\n%s", diff)
		}
		if ex := g.r.Status().Excluded; len(ex) != 0 {
			t.Errorf("excluded = %+v", ex)
		}
	})
}

// TestReconcilePeerKeyChangedKeepsRoamedEndpoint: a node behind a NAT was
// reached at the NAT's address (roamed); when its key changes, the new
// peer starts from that address, not from the unreachable published one.
func TestReconcilePeerKeyChangedKeepsRoamedEndpoint(t *testing.T) {
	nat := node(1)
	nat.Annotations[mesh.AnnotationEndpoint] = "203.0.113.2:51820"
	f := newFixture(t, nil, selfNode(), nat)
	f.reconcile(t)
	roamed := &net.UDPAddr{IP: net.ParseIP("198.51.100.11").To4(), Port: 40123}
	if err := f.dev.Roam(key(1), roamed); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t)
	if got := f.peers(t)[1]; got != "198.51.100.11:40123 25s 10.244.1.0/24" {
		t.Fatalf("roamed endpoint overwritten on resync: %q", got)
	}
	nat.Annotations[mesh.AnnotationPublicKey] = key(51).String()
	f.src.Upsert(nat)
	f.reconcile(t)
	if diff := cmp.Diff(map[byte]string{51: "198.51.100.11:40123 25s 10.244.1.0/24"}, f.peers(t)); diff != "" {
		t.Errorf("device (-want +got):\n%s", diff)
	}
	// Still treated as roamed afterwards.
	f.dev.ResetConfigs()
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("resync rewrote the new peer: %+v", c)
	}
	// A changed published endpoint wins over the roamed one.
	nat.Annotations[mesh.AnnotationEndpoint] = "203.0.113.9:51820"
	f.src.Upsert(nat)
	f.reconcile(t)
	if got := f.peers(t)[51]; got != "203.0.113.9:51820 25s 10.244.1.0/24" {
		t.Errorf("peer after the published endpoint moved: %q", got)
	}
}

func TestRotatedKeyIsNotAPeer(t *testing.T) {
	// After rotating, a node listing our new key is refused as ourselves,
	// and one listing our old key is an ordinary peer again.
	f, _ := rotationFixture(t)
	requestRotation(t, f, "r1")
	f.reconcile(t)
	imp := node(7)
	imp.Annotations[mesh.AnnotationPublicKey] = priv(1).PublicKey().String()
	old := node(8)
	old.Annotations[mesh.AnnotationPublicKey] = key(100).String()
	f.src.Upsert(imp)
	f.src.Upsert(old)
	f.reconcile(t)
	ex := f.r.Status().Excluded
	if len(ex) != 1 || ex[0].Node != "n7" || ex[0].Reason != mesh.ReasonSameKeyAsSelf {
		t.Errorf("excluded = %+v", ex)
	}
	if _, ok := f.peers(t)[100]; !ok {
		t.Error("node with our old key not configured")
	}
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestReconcilePeerKeyChangedGreets: without a keepalive, the new peer of a
// node that rotated its key is created with a keepalive that is turned off
// again in the same write, so that this side sends a handshake at once (the
// rotating node's own retries come only every 5 s). A node that merely
// joins gets no such greeting.
func TestReconcilePeerKeyChangedGreets(t *testing.T) {
	f := newFixture(t, func(c *mesh.Config) { c.DefaultKeepalive = 0 }, selfNode(), node(1))
	f.reconcile(t)
	f.dev.ResetConfigs()
	n1 := node(1)
	n1.Annotations[mesh.AnnotationPublicKey] = key(51).String()
	f.src.Upsert(n1)
	f.src.Upsert(node(2)) // joins in the same pass
	f.reconcile(t)

	cfgs := f.dev.Configs()
	if len(cfgs) != 1 {
		t.Fatalf("%d device writes, want 1", len(cfgs))
	}
	got := describePeerConfigs(cfgs[0])
	want := []string{
		"51 update=false remove=false ka=25s ips=1",
		"51 update=true remove=false ka=0s ips=0",
		"2 update=false remove=false ka=0s ips=1",
		"1 update=false remove=true ka=- ips=0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("peer changes (-want +got):\n%s", diff)
	}
	// Converged: keepalive off as desired, no further writes.
	if p := f.peers(t)[51]; p != "198.51.100.11:51820 0s 10.244.1.0/24" {
		t.Errorf("peer 51 = %q", p)
	}
	f.dev.ResetConfigs()
	f.reconcile(t)
	if c := f.dev.Configs(); len(c) != 0 {
		t.Errorf("not converged: %+v", c)
	}
}

func describePeerConfigs(cfg wgtypes.Config) []string {
	var out []string
	for _, pc := range cfg.Peers {
		ka := "-"
		if pc.PersistentKeepaliveInterval != nil {
			ka = pc.PersistentKeepaliveInterval.String()
		}
		out = append(out, fmt.Sprintf("%d update=%v remove=%v ka=%s ips=%d", pc.PublicKey[0], pc.UpdateOnly, pc.Remove, ka, len(pc.AllowedIPs)))
	}
	return out
}

func TestInitiateHandshakes(t *testing.T) {
	dev := &wgtypes.Device{Peers: []wgtypes.Peer{
		{PublicKey: key(1), PersistentKeepaliveInterval: 25 * time.Second},
		{PublicKey: key(2)},
	}}
	got := describePeerConfigs(mesh.InitiateHandshakes(dev))
	want := []string{
		"1 update=true remove=false ka=0s ips=0", "1 update=true remove=false ka=25s ips=0",
		"2 update=true remove=false ka=25s ips=0", "2 update=true remove=false ka=0s ips=0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !mesh.IsEmpty(mesh.InitiateHandshakes(nil)) || !mesh.IsEmpty(mesh.InitiateHandshakes(&wgtypes.Device{})) {
		t.Error("a device without peers needs no write")
	}
}
