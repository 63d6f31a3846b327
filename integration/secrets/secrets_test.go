// Package secrets checks, without root, that the node's private key never
// leaves its key file: the agent's components are wired as the agent wires
// them (key file with rotation, node source over a fake API server,
// reconciler, state file writer, Prometheus metrics), run through a join,
// a bad node, an unresolvable peer and two key rotations, with every log
// line captured at debug level in both formats; then the logs, the state
// file, the /metrics output, every API object (Nodes, Events) and every
// wgmeshctl rendering are searched for every private key the node had.
package secrets

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/secretscan"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/mesh/show"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func kubeNode(i int, ann map[string]string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i), UID: "uid", Annotations: ann},
		Spec:       v1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 10+i)}}},
	}
}

func TestPrivateKeyNeverLeaves(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "lib", "private.key")
	statePath := agentstate.Path(filepath.Join(dir, "run"))

	var jsonLog, textLog lockedBuffer
	log := slog.New(slog.NewMultiHandler(
		slog.NewJSONHandler(&jsonLog, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewTextHandler(&textLog, &slog.HandlerOptions{Level: slog.LevelDebug}),
	)).With("node", "n0")

	priv, created, err := wgdev.LoadOrCreateKey(keyFile)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateKey: created=%v err=%v", created, err)
	}
	keys := []wgtypes.Key{priv}

	c := fake.NewClientset(
		kubeNode(0, nil),
		kubeNode(1, map[string]string{mesh.AnnotationPublicKey: mustKey(t).PublicKey().String(), mesh.AnnotationEndpoint: "198.51.100.11:51820"}),
		kubeNode(2, map[string]string{mesh.AnnotationPublicKey: "not-a-key", mesh.AnnotationEndpoint: "198.51.100.12:51820"}),
		kubeNode(3, map[string]string{mesh.AnnotationPublicKey: mustKey(t).PublicKey().String(), mesh.AnnotationEndpoint: "nowhere.invalid:51820"}),
	)
	src, err := kube.New(kube.Config{Client: c, NodeName: "n0", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	// The device double holds the private key as wireguard-go does, so
	// whatever reads the device (metrics, show) sees it and must drop it.
	dev := meshtest.NewDevice("wgmesh0")
	if err := dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv, ListenPort: ptr(51820)}); err != nil {
		t.Fatal(err)
	}
	prom := metrics.New(metrics.Config{Device: dev, Logger: log, Version: "test"})
	state := agentstate.NewWriter(agentstate.WriterConfig{Path: statePath, Logger: log,
		Info: agentstate.Info{Node: "n0", Interface: "wgmesh0", PublicKey: priv.PublicKey(), ListenPort: 51820}})
	rec := mesh.New(mesh.Config{
		NodeName: "n0", PublicKey: priv.PublicKey(), Keys: wgdev.KeyFile(keyFile), ListenPort: 51820,
		DefaultKeepalive: 25 * time.Second, MTU: 1420,
		Source: src, Device: dev, Dataplane: &meshtest.Dataplane{}, Resolver: noResolver{}, Logger: log,
		Resync: 100 * time.Millisecond,
		OnReconcile: func(s mesh.Status) {
			prom.Observe(s)
			state.Observe(s)
		},
	})
	go src.Run(ctx)
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()

	eventually(t, "n1 configured", func() bool {
		d, _ := dev.Device()
		return len(d.Peers) == 2 // n1 and n3 (without endpoint); n2 excluded
	})
	// Two rotations, each answered.
	for i := range 2 {
		req := fmt.Sprintf("r%d", i)
		if _, err := c.CoreV1().Nodes().Patch(ctx, "n0", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"`+mesh.AnnotationRotateKey+`":"`+req+`"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "rotation "+req+" answered", func() bool {
			n, err := c.CoreV1().Nodes().Get(ctx, "n0", metav1.GetOptions{})
			return err == nil && n.Annotations[mesh.AnnotationKeyRotated] == req
		})
		k, err := wgdev.LoadKey(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	eventually(t, "warning events", func() bool {
		ev, _ := c.CoreV1().Events("").List(ctx, metav1.ListOptions{})
		return len(ev.Items) >= 2
	})
	time.Sleep(300 * time.Millisecond) // a few more resyncs on the final key
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if keys[0] == keys[1] || keys[1] == keys[2] {
		t.Fatal("rotations did not change the key")
	}

	// Everything the node exposes.
	corpus := map[string]string{"json log": jsonLog.String(), "text log": textLog.String()}
	raw, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	corpus["state file"] = string(raw)
	srv := httptest.NewServer(prom.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	corpus["metrics"] = string(body)
	if !strings.Contains(corpus["metrics"], "wgmesh_") {
		t.Fatalf("metrics scrape returned no wgmesh series:\n%s", body)
	}
	nodes, _ := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	events, _ := c.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	for what, obj := range map[string]any{"nodes": nodes, "events": events} {
		b, _ := json.Marshal(obj)
		corpus["API "+what] = string(b)
	}
	d, _ := dev.Device()
	if d.PrivateKey != keys[2] {
		t.Fatal("device does not hold the current key: the scan below would prove little")
	}
	st, err := agentstate.Read(statePath)
	if err != nil {
		t.Fatal(err)
	}
	report := show.Evaluate(show.Input{Device: d, State: st, Source: show.SourceStateFile, Now: time.Now(), HandshakeTimeout: time.Minute})
	for name, render := range map[string]func(io.Writer) error{
		"show text": func(w io.Writer) error { return show.Text(w, report) },
		"show json": func(w io.Writer) error { return show.JSON(w, report) },
		"show yaml": func(w io.Writer) error { return show.YAML(w, report) },
		"showconf":  func(w io.Writer) error { return show.Conf(w, report, show.ConfOptions{}) },
		"graph":     func(w io.Writer) error { return show.DOT(w, report) },
		"check":     func(w io.Writer) error { _, err := show.Check(w, report); return err },
	} {
		var b bytes.Buffer
		if err := render(&b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		corpus[name] = b.String()
	}

	// The scan can find a key: showconf --show-private prints it.
	var shown bytes.Buffer
	if err := show.Conf(&shown, report, show.ConfOptions{ShowPrivate: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(shown.String(), keys[2].String()) {
		t.Fatalf("showconf --show-private lacks the key; the scan is blind:\n%s", shown.String())
	}
	if !strings.Contains(corpus["showconf"], "redacted") {
		t.Errorf("showconf does not say the key is redacted:\n%s", corpus["showconf"])
	}

	total := 0
	for what, text := range corpus {
		total += len(text)
		if i, form := secretscan.Find(text, keys); i >= 0 {
			t.Errorf("private key #%d appears in %s (form %.10q...)", i, what, form)
		}
	}
	// The public keys are there, so the corpus is the real thing.
	for _, k := range keys {
		if !strings.Contains(corpus["json log"], k.PublicKey().String()) {
			t.Errorf("json log never mentions public key %s", k.PublicKey())
		}
	}
	t.Logf("searched %d bytes (%d sources) for %d private keys in %d encodings: none found",
		total, len(corpus), len(keys), len(secretscan.Forms(keys[0])))
}

func TestKeyFileModes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "private.key")
	if _, _, err := wgdev.LoadOrCreateKey(path); err != nil {
		t.Fatal(err)
	}
	if err := wgdev.KeyFile(path).Save(mustKey(t)); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %#o, want %#o", p, st.Mode().Perm(), want)
		}
	}
	// A key file readable by others is refused, not used.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := wgdev.LoadOrCreateKey(path); err == nil {
		t.Error("a 0644 key file was accepted")
	}
}

type noResolver struct{}

func (noResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return nil, fmt.Errorf("no DNS in this test")
}

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ptr[T any](v T) *T { return &v }

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
