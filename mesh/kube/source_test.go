package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

func key(i byte) wgtypes.Key {
	var k wgtypes.Key
	k[0], k[31] = i, 0x42
	return k
}

// kubeNode is a valid mesh member i: key(i), 198.51.100.(10+i):51820, 10.244.i.0/24.
func kubeNode(i byte) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("n%d", i),
			UID:  types.UID(fmt.Sprintf("uid-%d", i)),
			Annotations: map[string]string{
				mesh.AnnotationPublicKey: key(i).String(),
				mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:51820", 10+int(i)),
			},
			CreationTimestamp: metav1.NewTime(time.Date(2025, 1, 1, 0, int(i), 0, 0, time.UTC)),
		},
		Spec: v1.NodeSpec{PodCIDR: fmt.Sprintf("10.244.%d.0/24", i), PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: fmt.Sprintf("n%d", i)},
			{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 10+int(i))},
		}},
	}
}

// selfKubeNode is node 0 before the agent published anything.
func selfKubeNode() *v1.Node {
	n := kubeNode(0)
	n.Annotations = map[string]string{"other.example/keep": "me"}
	n.Labels = map[string]string{"role": "worker"}
	return n
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func TestRawNode(t *testing.T) {
	created := time.Date(2025, 2, 3, 4, 5, 6, 0, time.UTC)
	tests := []struct {
		name string
		node *v1.Node
		want mesh.RawNode
	}{
		{
			name: "full",
			node: &v1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: "a", UID: "u1", CreationTimestamp: metav1.NewTime(created),
					Annotations: map[string]string{"wgmesh.io/public-key": "k", "x": "y"}},
				Spec: v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00::/64"}},
				Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
					{Type: v1.NodeExternalIP, Address: "203.0.113.1"},
					{Type: v1.NodeInternalIP, Address: "198.51.100.1"},
					{Type: v1.NodeInternalIP, Address: "2001:db8::1"},
				}},
			},
			want: mesh.RawNode{Name: "a", UID: "u1", Created: created,
				Annotations: map[string]string{"wgmesh.io/public-key": "k", "x": "y"},
				PodCIDRs:    []string{"10.244.1.0/24", "fd00::/64"}, InternalIPs: []string{"198.51.100.1", "2001:db8::1"}},
		},
		{
			name: "podCIDR fallback",
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: v1.NodeSpec{PodCIDR: "10.244.2.0/24"}},
			want: mesh.RawNode{Name: "b", PodCIDRs: []string{"10.244.2.0/24"}},
		},
		{
			name: "nothing",
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "c"}},
			want: mesh.RawNode{Name: "c"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RawNode(tt.node)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("RawNode (-want +got):\n%s", diff)
			}
			if got.Annotations != nil {
				got.Annotations["mutated"] = "1"
				if _, ok := tt.node.Annotations["mutated"]; ok {
					t.Error("RawNode shares the annotation map with the cached object")
				}
			}
		})
	}
}

func TestEventReason(t *testing.T) {
	for in, want := range map[string]string{
		string(mesh.ReasonBadPublicKey):     "BadPublicKey",
		string(mesh.ReasonSameKeyAsSelf):    "SamePublicKeyAsSelf",
		string(mesh.ReasonOverlapsSelfCIDR): "OverlapsLocalPodCidr",
		"":                                  "Warning",
	} {
		if got := EventReason(in); got != want {
			t.Errorf("EventReason(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{NodeName: "n0"}); err == nil {
		t.Error("New without client succeeded")
	}
	if _, err := New(Config{Client: fake.NewClientset()}); err == nil {
		t.Error("New without node name succeeded")
	}
}

func TestPublishIsMergePatch(t *testing.T) {
	client := fake.NewClientset(selfKubeNode())
	s, err := New(Config{Client: client, NodeName: "n0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	client.ClearActions()
	ann := map[string]string{mesh.AnnotationPublicKey: key(100).String(), mesh.AnnotationEndpoint: "198.51.100.10:51820"}
	if err := s.Publish(context.Background(), ann); err != nil {
		t.Fatal(err)
	}
	acts := client.Actions()
	if len(acts) != 1 {
		t.Fatalf("actions = %v, want one patch", acts)
	}
	pa, ok := acts[0].(k8stesting.PatchAction)
	if !ok || pa.GetVerb() != "patch" || pa.GetPatchType() != types.MergePatchType || pa.GetName() != "n0" {
		t.Fatalf("action = %#v, want a merge patch of n0", acts[0])
	}
	var body map[string]any
	if err := json.Unmarshal(pa.GetPatch(), &body); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]any{"metadata": map[string]any{"annotations": map[string]any{
		mesh.AnnotationPublicKey: key(100).String(), mesh.AnnotationEndpoint: "198.51.100.10:51820",
	}}}, body); diff != "" {
		t.Errorf("patch body (-want +got):\n%s", diff)
	}
	n, err := client.CoreV1().Nodes().Get(context.Background(), "n0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Annotations["other.example/keep"] != "me" || n.Labels["role"] != "worker" || n.Annotations[mesh.AnnotationEndpoint] != "198.51.100.10:51820" {
		t.Errorf("node after publish: annotations %v labels %v", n.Annotations, n.Labels)
	}

	before := len(client.Actions())
	if err := s.Publish(context.Background(), nil); err != nil || len(client.Actions()) != before {
		t.Errorf("empty publish: err %v, actions %d -> %d", err, before, len(client.Actions()))
	}
	missing, _ := New(Config{Client: client, NodeName: "ghost"})
	if err := missing.Publish(context.Background(), ann); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("publish to missing node: %v", err)
	}
}

func TestDeleteHandlerUnwrapsTombstones(t *testing.T) {
	s, err := New(Config{Client: fake.NewClientset(), NodeName: "n0"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		obj       any
		name      string
		tombstone bool
	}{
		{kubeNode(1), "n1", false},
		{cache.DeletedFinalStateUnknown{Key: "n2", Obj: kubeNode(2)}, "n2", true},
		{cache.DeletedFinalStateUnknown{Key: "n3", Obj: "not a node"}, "n3", true},
		{"garbage", "", false},
	}
	for _, tt := range tests {
		name, tomb := nodeName(tt.obj)
		if name != tt.name || tomb != tt.tombstone {
			t.Errorf("nodeName(%T) = %q, %v; want %q, %v", tt.obj, name, tomb, tt.name, tt.tombstone)
		}
		s.onDelete(tt.obj) // must not panic, must signal
		select {
		case <-s.Changed():
		default:
			t.Errorf("delete of %T did not signal", tt.obj)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// agent wires the kube source to a reconciler with an in-memory device and
// dataplane, the way cmd/wgmesh-agent does with real ones.
type agent struct {
	client *fake.Clientset
	src    *Source
	dev    *meshtest.Device
	dp     *meshtest.Dataplane
	r      *mesh.Reconciler
}

func startAgent(t *testing.T, objs ...*v1.Node) *agent {
	t.Helper()
	var ro []runtime.Object
	for _, o := range objs {
		ro = append(ro, o)
	}
	a := &agent{client: fake.NewClientset(ro...), dev: meshtest.NewDevice("wgmesh0"), dp: &meshtest.Dataplane{}}
	var err error
	a.src, err = New(Config{Client: a.client, NodeName: "n0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a.r = mesh.New(mesh.Config{
		NodeName: "n0", PublicKey: key(100), ListenPort: 51820, DefaultKeepalive: 25 * time.Second, MTU: 1420,
		Source: a.src, Device: a.dev, Dataplane: a.dp, Logger: testLogger(t),
		Resync: time.Hour, // passes here are driven by informer events only
	})
	ctx, cancel := context.WithCancel(context.Background())
	srcDone, rDone := make(chan error, 1), make(chan error, 1)
	go func() { srcDone <- a.src.Run(ctx) }()
	go func() { rDone <- a.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for _, ch := range []chan error{rDone, srcDone} {
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after cancel")
			}
		}
	})
	return a
}

// peers maps key byte -> "endpoint allowed-ips".
func (a *agent) peers(t *testing.T) map[byte]string {
	d, err := a.dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	m := map[byte]string{}
	for _, p := range d.Peers {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		m[p.PublicKey[0]] = fmt.Sprintf("%v %s", p.Endpoint, strings.Join(ips, ","))
	}
	return m
}

func (a *agent) hasPeers(t *testing.T, want map[byte]string) func() bool {
	return func() bool { return cmp.Equal(want, a.peers(t)) }
}

func (a *agent) node(t *testing.T, name string) *v1.Node {
	n, err := a.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (a *agent) warningEvents(t *testing.T, node string) []v1.Event {
	list, err := a.client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == node && e.Type == v1.EventTypeWarning {
			out = append(out, e)
		}
	}
	return out
}

func TestAgentAgainstFakeClientset(t *testing.T) {
	ctx := context.Background()
	a := startAgent(t, selfKubeNode(), kubeNode(1), kubeNode(2))
	nodes := a.client.CoreV1().Nodes()

	// Join: both peers configured, own annotations published by patch.
	waitFor(t, "initial peers", a.hasPeers(t, map[byte]string{
		1: "198.51.100.11:51820 10.244.1.0/24",
		2: "198.51.100.12:51820 10.244.2.0/24",
	}))
	waitFor(t, "own annotations", func() bool {
		return a.node(t, "n0").Annotations[mesh.AnnotationEndpoint] == "198.51.100.10:51820"
	})
	self := a.node(t, "n0")
	if self.Annotations[mesh.AnnotationPublicKey] != key(100).String() || self.Annotations["other.example/keep"] != "me" {
		t.Errorf("own annotations = %v", self.Annotations)
	}
	for _, act := range a.client.Actions() {
		if act.GetResource().Resource == "nodes" && act.GetVerb() == "update" {
			t.Errorf("agent updated a node instead of patching: %v", act)
		}
	}
	st, _ := a.dp.Last()
	if st.MTU != 1420 || len(st.LocalPodCIDRs) != 1 || st.LocalPodCIDRs[0].String() != "10.244.0.0/24" {
		t.Errorf("dataplane state = %+v", st)
	}

	// A new node joins: exactly one write, adding only it.
	a.dev.ResetConfigs()
	if _, err := nodes.Create(ctx, kubeNode(3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n3 joins", func() bool { _, ok := a.peers(t)[3]; return ok })
	if c := a.dev.Configs(); len(c) != 1 || len(c[0].Peers) != 1 || c[0].Peers[0].PublicKey != key(3) {
		t.Errorf("join wrote %+v", c)
	}

	// Update n2's endpoint: only that peer is touched.
	a.dev.ResetConfigs()
	n2 := kubeNode(2)
	n2.Annotations[mesh.AnnotationEndpoint] = "198.51.100.42:51820"
	if _, err := nodes.Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2 endpoint update", func() bool { return strings.HasPrefix(a.peers(t)[2], "198.51.100.42:51820 ") })
	c := a.dev.Configs()
	if len(c) != 1 || len(c[0].Peers) != 1 || c[0].Peers[0].PublicKey != key(2) || !c[0].Peers[0].UpdateOnly || c[0].ReplacePeers {
		t.Errorf("update wrote %+v, want one UpdateOnly config for key 2", c)
	}

	// A bad node: excluded, a Warning event on it, other peers untouched.
	a.dev.ResetConfigs()
	bad := kubeNode(4)
	bad.Annotations[mesh.AnnotationPublicKey] = "definitely-not-base64!"
	if _, err := nodes.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "warning event on n4", func() bool { return len(a.warningEvents(t, "n4")) > 0 })
	ev := a.warningEvents(t, "n4")[0]
	if ev.Reason != "BadPublicKey" || ev.Source.Component != DefaultComponent || ev.InvolvedObject.UID != "uid-4" ||
		!strings.Contains(ev.Message, "definitely-not-base64!") {
		t.Errorf("event = reason %q source %+v involved %+v message %q", ev.Reason, ev.Source, ev.InvolvedObject, ev.Message)
	}
	if c := a.dev.Configs(); len(c) != 0 {
		t.Errorf("bad node caused device writes: %+v", c)
	}
	if _, ok := a.peers(t)[4]; ok {
		t.Error("bad node became a peer")
	}

	// Delete n1: removed, nothing else touched.
	a.dev.ResetConfigs()
	if err := nodes.Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 removed", func() bool { _, ok := a.peers(t)[1]; return !ok })
	if c := a.dev.Configs(); len(c) != 1 || len(c[0].Peers) != 1 || !c[0].Peers[0].Remove || c[0].Peers[0].PublicKey != key(1) {
		t.Errorf("delete wrote %+v", c)
	}
	waitFor(t, "route of n1 withdrawn", func() bool {
		st, _ := a.dp.Last()
		for _, p := range st.RemotePodCIDRs {
			if p.String() == "10.244.1.0/24" {
				return false
			}
		}
		return true
	})

	// Tombstone: the watch "missed" n3's delete; a relist found it gone and
	// the informer hands the handler a DeletedFinalStateUnknown.
	a.dev.ResetConfigs()
	n3, exists, err := a.src.informer.GetStore().GetByKey("n3")
	if err != nil || !exists {
		t.Fatalf("n3 not in the informer store: %v", err)
	}
	if err := a.src.informer.GetStore().Delete(n3); err != nil {
		t.Fatal(err)
	}
	a.src.onDelete(cache.DeletedFinalStateUnknown{Key: "n3", Obj: n3})
	waitFor(t, "n3 removed after tombstone", func() bool { _, ok := a.peers(t)[3]; return !ok })
	if c := a.dev.Configs(); len(c) != 1 || len(c[0].Peers) != 1 || !c[0].Peers[0].Remove || c[0].Peers[0].PublicKey != key(3) {
		t.Errorf("tombstone wrote %+v", c)
	}

	// Someone overwrites our endpoint annotation: it is re-published. (The
	// fake clientset does not bump metadata.resourceVersion, so a pass that
	// runs before our patch reaches the cache may publish the same values
	// twice; the count is a lower bound here, and the dedup is unit-tested
	// in package mesh.)
	publishing := func() int {
		n := 0
		for _, act := range a.client.Actions() {
			if pa, ok := act.(k8stesting.PatchAction); ok && pa.GetName() == "n0" && strings.Contains(string(pa.GetPatch()), "198.51.100.10:51820") {
				n++
			}
		}
		return n
	}
	before := publishing()
	if before == 0 {
		t.Fatal("no publishing patch seen")
	}
	tamper := []byte(`{"metadata":{"annotations":{"wgmesh.io/endpoint":"198.51.100.250:1"}}}`)
	if _, err := nodes.Patch(ctx, "n0", types.MergePatchType, tamper, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "endpoint re-published", func() bool { return publishing() > before })
	waitFor(t, "cache shows the re-published endpoint", func() bool {
		n, err := a.src.lister.Get("n0")
		return err == nil && n.Annotations[mesh.AnnotationEndpoint] == "198.51.100.10:51820"
	})
	if got := a.node(t, "n0").Annotations[mesh.AnnotationEndpoint]; got != "198.51.100.10:51820" {
		t.Errorf("endpoint annotation = %q after re-publish", got)
	}

	// A no-op resync makes zero device writes and no further events.
	a.dev.ResetConfigs()
	events := len(a.warningEvents(t, "n4"))
	settled := publishing()
	for range 3 {
		if err := a.r.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if c := a.dev.Configs(); len(c) != 0 {
		t.Errorf("no-op resync wrote %+v", c)
	}
	if n := publishing(); n != settled {
		t.Errorf("no-op resync published again (%d -> %d patches)", settled, n)
	}
	time.Sleep(50 * time.Millisecond) // events are sent asynchronously
	if n := len(a.warningEvents(t, "n4")); n != events {
		t.Errorf("resync emitted more events: %d -> %d", events, n)
	}
	if want := map[byte]string{2: "198.51.100.42:51820 10.244.2.0/24"}; !cmp.Equal(want, a.peers(t)) {
		t.Errorf("final peers %v, want %v", a.peers(t), want)
	}
	s := a.r.Status()
	if !s.Synced || !s.SelfFound || len(s.Excluded) != 1 || s.Excluded[0].Node != "n4" {
		t.Errorf("status = %+v", s)
	}
}
