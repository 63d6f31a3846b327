package datapath

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/secretscan"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/show"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// insideEnv marks the copy of the test binary that runs inside the
// namespace (see inNamespace).
const insideEnv = "WGMESH_SECRETS_INSIDE"

const metricsAddress = "127.0.0.1:9585"

func kubeNode(i int, ann map[string]string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i), UID: "uid", Annotations: ann},
		Spec:       v1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 10+i)}}},
	}
}

// inNamespace runs the calling test again, alone, in a fresh network
// namespace (whose loopback is its only link: nothing the agent sends
// leaves it) and fails unless that run passes. It reports whether the
// caller is the copy inside, which then does the work.
func inNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv(insideEnv) != "" {
		// `ip netns exec` gave this process a private (slave) mount
		// namespace; a tmpfs on /run keeps the UAPI socket
		// (/var/run/wireguard) and the agent's files in it.
		if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs on /run: %v", err)
		}
		return true
	}
	netnstest.RequireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := netnstest.NewNS(t, netnstest.Prefix(t)+"-sec")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := ns.Command(ctx, self, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), insideEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("run inside netns %s:\n%s", ns.Name, out)
	if err != nil {
		t.Fatalf("the test failed inside the namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("the run inside the namespace did not report a pass")
	}
	return false
}

// TestPrivateKeyNeverLeaves checks that the node's private key never
// leaves its key file. The agent as shipped (mesh/agent: key file with
// rotation, the client-go node source over a fake API server, reconciler,
// state file, Prometheus metrics on its listener, NetworkPolicy engine,
// wireguard-go device and dataplane) runs in a network namespace of its own
// through a join, a bad node, an unresolvable peer and two key rotations,
// with every log line captured at debug level in both formats; then the
// logs, the state file, the /metrics output, every API object (Nodes,
// Events) and every wgmeshctl rendering are searched for every private key
// the node had.
func TestPrivateKeyNeverLeaves(t *testing.T) {
	if !inNamespace(t) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "lib", "private.key")
	runDir := filepath.Join(dir, "run")
	statePath := agentstate.Path(runDir)

	var jsonLog, textLog netnstest.SyncBuffer
	log := slog.New(slog.NewMultiHandler(
		slog.NewJSONHandler(&jsonLog, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewTextHandler(&textLog, &slog.HandlerOptions{Level: slog.LevelDebug}),
	)).With("node", "n0")

	c := fake.NewClientset(
		kubeNode(0, nil),
		kubeNode(1, map[string]string{mesh.AnnotationPublicKey: mustKey(t).PublicKey().String(), mesh.AnnotationEndpoint: "198.51.100.11:51820"}),
		kubeNode(2, map[string]string{mesh.AnnotationPublicKey: "not-a-key", mesh.AnnotationEndpoint: "198.51.100.12:51820"}),
		kubeNode(3, map[string]string{mesh.AnnotationPublicKey: mustKey(t).PublicKey().String(), mesh.AnnotationEndpoint: "nowhere.invalid:51820"}),
	)
	a, err := agent.New(agent.Config{
		NodeName: "n0", Interface: "wgmesh0", ListenPort: 51820, KeyFile: keyFile, MTU: 1420,
		Keepalive: 25 * time.Second, CNIConfDir: filepath.Join(dir, "net.d"), RunDir: runDir,
		Resync: 100 * time.Millisecond, MetricsAddress: metricsAddress, NetworkPolicy: true,
		KubeClient: c, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	// The device the agent runs, read over its UAPI socket: wireguard-go
	// holds the private key, so whatever reads the device (metrics, show)
	// sees it and must drop it.
	var dev *wgdev.Client
	eventually(t, "n1 configured", func() bool {
		if dev == nil {
			if dev, err = wgdev.Dial("wgmesh0"); err != nil {
				return false
			}
		}
		d, err := dev.Device()
		return err == nil && len(d.Peers) == 2 // n1 and n3 (without endpoint); n2 excluded
	})
	defer dev.Close()
	if !strings.Contains(textLog.String(), "generated a new private key") {
		t.Fatal("the agent did not create the key file: the first key is not the agent's own")
	}
	priv, err := wgdev.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	keys := []wgtypes.Key{priv}

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
	if keys[0] == keys[1] || keys[1] == keys[2] {
		t.Fatal("rotations did not change the key")
	}

	// Everything the running agent serves: its /metrics, its device.
	corpus := map[string]string{}
	resp, err := http.Get("http://" + metricsAddress + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	corpus["metrics"] = string(body)
	if !strings.Contains(corpus["metrics"], "wgmesh_") {
		t.Fatalf("metrics scrape returned no wgmesh series:\n%s", body)
	}
	d, err := dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	if d.PrivateKey != keys[2] {
		t.Fatal("device does not hold the current key: the scan below would prove little")
	}
	st, err := agentstate.Read(statePath)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Everything the node leaves behind.
	corpus["json log"], corpus["text log"] = jsonLog.String(), textLog.String()
	raw, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	corpus["state file"] = string(raw)
	nodes, _ := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	events, _ := c.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	for what, obj := range map[string]any{"nodes": nodes, "events": events} {
		b, _ := json.Marshal(obj)
		corpus["API "+what] = string(b)
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

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

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
