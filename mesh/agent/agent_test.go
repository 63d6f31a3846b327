package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
	"github.com/wgmesh/wgmesh/mesh/policy"
	policynft "github.com/wgmesh/wgmesh/mesh/policy/nft"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// recorder is the fake host: every contact with the machine is one event.
type recorder struct {
	mu       sync.Mutex
	events   []string
	guardErr error
	device   *meshtest.Device
	closed   bool // the device client
	misuse   []string
	policies int // policy rulesets applied
	addr     net.Addr
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) Events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) host(client kubernetes.Interface) host {
	return host{
		lookupEnv: func(string) (string, bool) { return "", false },
		system:    &fakeSystem{r: r},
		autoMTU: func(exclude ...string) (int, error) {
			r.add("detect mtu (not %v)", exclude)
			return 1420, nil
		},
		kubeClient: func(kubeconfig string) (kubernetes.Interface, error) {
			r.add("kube client %q", kubeconfig)
			if client == nil {
				return nil, errors.New("no client in this test")
			}
			return client, nil
		},
		openDevice: func(c wgdev.Config) (device, error) {
			r.add("open device %s mtu %d with %d restored peers", c.Name, c.MTU, len(c.Peers))
			return &fakeDevice{r: r, done: make(chan struct{})}, nil
		},
		dial: func(name string) (deviceClient, error) {
			r.add("dial %s", name)
			return &fakeClient{r: r}, nil
		},
		policy: func(policynft.Config) (policyTables, error) { return fakeTables{r}, nil },
		listen: func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err == nil {
				r.mu.Lock()
				r.addr = ln.Addr()
				r.mu.Unlock()
				r.add("listen %s", address)
			}
			return ln, err
		},
	}
}

type fakeDevice struct {
	r    *recorder
	done chan struct{}
}

func (d *fakeDevice) Done() <-chan struct{}      { return d.done }
func (d *fakeDevice) Err() error                 { return nil }
func (d *fakeDevice) Greet(...wgtypes.Key)       {}
func (d *fakeDevice) GreetSilent(...wgtypes.Key) {}
func (d *fakeDevice) Close() error {
	d.r.add("close device")
	return nil
}

// fakeClient is the UAPI client over the recorder's in-memory device; it
// notes any use after Close.
type fakeClient struct{ r *recorder }

func (c *fakeClient) check(op string) {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	if c.r.closed {
		c.r.misuse = append(c.r.misuse, op+" after close")
	}
}

func (c *fakeClient) Device() (*wgtypes.Device, error) {
	c.check("read device")
	return c.r.device.Device()
}

func (c *fakeClient) ConfigureDevice(cfg wgtypes.Config) error {
	c.check("configure device")
	return c.r.device.ConfigureDevice(cfg)
}

func (c *fakeClient) Close() error {
	c.r.mu.Lock()
	c.r.closed = true
	c.r.mu.Unlock()
	c.r.add("close device client")
	return nil
}

type fakeTables struct{ r *recorder }

func (f fakeTables) Apply(context.Context, policy.Ruleset) error {
	f.r.mu.Lock()
	f.r.policies++
	f.r.mu.Unlock()
	return nil
}

func (f fakeTables) Remove() error {
	f.r.add("remove policy tables")
	return nil
}

// fakeSystem records the dataplane's kernel calls coarsely: the guard,
// routes and bridge; the rest succeeds silently.
type fakeSystem struct {
	r      *recorder
	mu     sync.Mutex
	routes []dataplane.Route
}

func (f *fakeSystem) EnsureBridge(name string, _ int) error {
	f.r.add("bridge %s", name)
	return nil
}
func (f *fakeSystem) EnsureLinkUp(string, int) error         { return nil }
func (f *fakeSystem) Addrs(string) ([]netip.Prefix, error)   { return nil, nil }
func (f *fakeSystem) AddAddr(string, netip.Prefix) error     { return nil }
func (f *fakeSystem) DelAddr(string, netip.Prefix) error     { return nil }
func (f *fakeSystem) Sysctl(string) (string, error)          { return "1", nil }
func (f *fakeSystem) SetSysctl(string, string) error         { return nil }
func (f *fakeSystem) ApplyFirewall(dataplane.Firewall) error { return nil }
func (f *fakeSystem) RemoveFirewall(...string) error         { return nil }
func (f *fakeSystem) DeleteLink(string) error                { return nil }
func (f *fakeSystem) ReplaceRoute(r dataplane.Route) error   { return nil }
func (f *fakeSystem) DelRoute(r dataplane.Route) error       { return nil }
func (f *fakeSystem) Routes(int) ([]dataplane.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.routes), nil
}
func (f *fakeSystem) ApplyGuard(g dataplane.Guard) error {
	f.r.add("guard %v", g.ClusterCIDRs)
	return f.r.guardErr
}
func (f *fakeSystem) AddRoute(r dataplane.Route) error {
	f.mu.Lock()
	f.routes = append(f.routes, r)
	f.mu.Unlock()
	f.r.add("route %s %s", r.Type, r.Dst)
	return nil
}

// source is a meshtest.Source with the Run loop the agent starts.
type source struct {
	*meshtest.Source
	r *recorder
}

func (s source) Run(ctx context.Context) error {
	s.r.add("node source running")
	<-ctx.Done()
	s.r.add("node source stopped")
	return nil
}

func testConfig(t *testing.T) Config {
	dir := t.TempDir()
	return Config{
		NodeName:   "n1",
		Interface:  "wgtest0",
		ListenPort: 51820,
		KeyFile:    filepath.Join(dir, "lib", "private.key"),
		CNIConfDir: filepath.Join(dir, "net.d"),
		RunDir:     filepath.Join(dir, "run"),
		Resync:     time.Hour,
	}
}

// start runs a in the background; stop cancels it and returns Run's error.
func start(t *testing.T, a *Agent) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(cancel)
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of cancel")
			return nil
		}
	}
}

func TestRunOrderRestoreAndShutdown(t *testing.T) {
	cfg := testConfig(t)
	cfg.MetricsAddress = "127.0.0.1:0"
	cfg.MemoryLimit = MemoryLimitOff // the test binary's limit is not ours

	// The previous run left a state file with one peer.
	peerKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peer := mesh.Peer{Node: "n2", PublicKey: peerKey.PublicKey(), Endpoint: netip.MustParseAddrPort("198.51.100.12:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	prev := agentstate.FromStatus(agentstate.Info{Node: "n1", Interface: "wgtest0", PublicKey: peerKey.PublicKey(), ListenPort: 51820},
		mesh.Status{LastReconcile: time.Now(), Peers: []mesh.Peer{peer}}, nil)
	if err := agentstate.Write(agentstate.Path(cfg.RunDir), prev); err != nil {
		t.Fatal(err)
	}

	r := &recorder{device: meshtest.NewDevice("wgtest0")}
	src := meshtest.NewSource("n1",
		mesh.RawNode{Name: "n1", PodCIDRs: []string{"10.244.1.0/24"}, InternalIPs: []string{"198.51.100.11"}},
		mesh.RawNode{Name: "n2", PodCIDRs: []string{"10.244.2.0/24"}, InternalIPs: []string{"198.51.100.12"},
			Annotations: map[string]string{mesh.AnnotationPublicKey: peerKey.PublicKey().String(), mesh.AnnotationEndpoint: "198.51.100.12:51820"}})
	cfg.NodeSource = source{src, r}
	first := make(chan mesh.Status, 1)
	var writes []wgtypes.Config
	var writesMu sync.Mutex
	cfg.OnReconcile = func(s mesh.Status) {
		r.add("reconciled (%d peers)", len(s.Peers))
		select {
		case first <- s:
		default:
		}
	}
	cfg.OnDeviceWrite = func(c wgtypes.Config) {
		writesMu.Lock()
		writes = append(writes, c)
		writesMu.Unlock()
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.host = r.host(nil)
	stop := start(t, a)

	var st mesh.Status
	select {
	case st = <-first:
	case <-time.After(10 * time.Second):
		t.Fatalf("no reconcile within 10s; events: %q", r.Events())
	}
	if len(st.Peers) != 1 || st.Peers[0].Node != "n2" {
		t.Errorf("first pass peers %+v, want n2", st.Peers)
	}

	// Everything the agent serves and writes is there.
	r.mu.Lock()
	addr := r.addr
	r.mu.Unlock()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "wgmesh_peers") {
		t.Errorf("/metrics lacks wgmesh_peers:\n%.500s", body)
	}
	if _, err := os.Stat(filepath.Join(cfg.CNIConfDir, "10-wgmesh.conflist")); err != nil {
		t.Errorf("no CNI conflist after the first pass: %v", err)
	}
	if pub := src.Published(); len(pub) == 0 || pub[0][mesh.AnnotationPublicKey] == "" {
		t.Errorf("own key not published: %v", pub)
	}
	key, err := wgdev.LoadKey(cfg.KeyFile)
	if err != nil {
		t.Fatalf("key file: %v", err)
	}
	if st.PublicKey != key.PublicKey() {
		t.Errorf("agent runs public key %s, key file holds %s", st.PublicKey, key.PublicKey())
	}
	writesMu.Lock()
	nWrites := len(writes)
	writesMu.Unlock()
	if uint64(nWrites) != st.DeviceWrites {
		t.Errorf("OnDeviceWrite saw %d writes, the reconciler made %d", nWrites, st.DeviceWrites)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	want := []string{
		// Prepare: the catch-all route, then the guard.
		"route unreachable 10.244.0.0/16",
		"guard [10.244.0.0/16]",
		"detect mtu (not [wgtest0 wgmesh-br0])",
		"open device wgtest0 mtu 1420 with 1 restored peers",
		"dial wgtest0",
		"listen 127.0.0.1:0",
	}
	got := r.Events()
	if len(got) < len(want) || !cmp.Equal(got[:len(want)], want) {
		t.Fatalf("start-up events (-want +got):\n%s", cmp.Diff(want, got[:min(len(want), len(got))]))
	}
	rest := got[len(want):]
	for _, e := range []string{"node source running", "remove policy tables", "reconciled (1 peers)"} {
		if !slices.Contains(rest, e) {
			t.Errorf("no %q after start-up; events %q", e, got)
		}
	}
	// Shutdown: the goroutines stop (the last pass included), then the
	// client closes, then the device.
	closing := slices.Index(got, "close device client")
	if d := cmp.Diff([]string{"close device client", "close device"}, got[max(0, len(got)-2):]); d != "" {
		t.Errorf("shutdown order (-want +got):\n%s\nall events %q", d, got)
	}
	if stopped := slices.Index(got, "node source stopped"); stopped < 0 || stopped > closing {
		t.Errorf("node source stopped at event %d, device client closed at %d: %q", stopped, closing, got)
	}
	if len(r.misuse) > 0 {
		t.Errorf("device used after its client closed: %v", r.misuse)
	}
}

func TestRunFailsClosedBeforeAnythingElse(t *testing.T) {
	cfg := testConfig(t)
	cfg.MemoryLimit = MemoryLimitOff
	r := &recorder{device: meshtest.NewDevice("wgtest0"), guardErr: errors.New("nft: permission denied")}
	cfg.NodeSource = source{meshtest.NewSource("n1"), r}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.host = r.host(nil)
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "fail-closed setup") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Run = %v, want the fail-closed setup error", err)
	}
	if _, err := os.Stat(cfg.KeyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("key file created although fail-closed setup failed (stat: %v)", err)
	}
	for _, e := range r.Events() {
		if !strings.HasPrefix(e, "guard") && !strings.HasPrefix(e, "route") {
			t.Errorf("step %q ran although fail-closed setup failed", e)
		}
	}
}

// TestRunWithKubeClient: without a node source the agent watches the Nodes
// through the client (here client-go's fake), publishes its key on its own
// Node and runs the NetworkPolicy engine over the same client.
func TestRunWithKubeClient(t *testing.T) {
	cfg := testConfig(t)
	cfg.MemoryLimit = MemoryLimitOff
	cfg.MTU = 1380
	cfg.NetworkPolicy = true
	cfg.Kubeconfig = "/etc/kubeconfig"
	client := fake.NewClientset(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}},
		Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "198.51.100.11"}}},
	})
	r := &recorder{device: meshtest.NewDevice("wgtest0")}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.host = r.host(client)
	stop := start(t, a)

	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		r.mu.Lock()
		applied := r.policies
		r.mu.Unlock()
		if err == nil && n.Annotations[mesh.AnnotationPublicKey] != "" && applied > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 10s: annotations %v, policy rulesets applied %d; events %q", n.Annotations, applied, r.Events())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ev := r.Events()
	if !slices.Contains(ev, `kube client "/etc/kubeconfig"`) {
		t.Errorf("no client built from the kubeconfig; events %q", ev)
	}
	if slices.Contains(ev, "remove policy tables") {
		t.Error("policy tables removed with NetworkPolicy on")
	}
	if slices.ContainsFunc(ev, func(e string) bool { return strings.HasPrefix(e, "detect mtu") }) {
		t.Error("MTU detected although configured")
	}
}

func TestNewValidates(t *testing.T) {
	src := source{meshtest.NewSource("n1"), &recorder{}}
	tests := []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no node name", func(c *Config) { c.NodeName = "" }, "node-name is required"},
		{"no interface", func(c *Config) { c.Interface = "" }, "interface is required"},
		{"no key file", func(c *Config) { c.KeyFile = "" }, "key-file is required"},
		{"no run dir", func(c *Config) { c.RunDir = "" }, "run-dir is required"},
		{"no cni conf dir", func(c *Config) { c.CNIConfDir = "" }, "cni-conf-dir is required"},
		{"long interface", func(c *Config) { c.Interface = "wgmesh-interface0" }, "at most 15 bytes"},
		{"bridge is interface", func(c *Config) { c.CNIBridge = "wgtest0" }, "both"},
		{"port 0", func(c *Config) { c.ListenPort = 0 }, "listen-port"},
		{"mtu too small", func(c *Config) { c.MTU = 600 }, "mtu"},
		{"mtu auto", func(c *Config) { c.MTU = 0 }, ""},
		{"bad endpoint", func(c *Config) { c.Endpoint = "no-port" }, "endpoint"},
		{"fractional keepalive", func(c *Config) { c.Keepalive = 1500 * time.Millisecond }, "whole seconds"},
		{"negative resync", func(c *Config) { c.Resync = -time.Second }, "resync"},
		{"cluster cidr with host bits", func(c *Config) { c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.1/16")} }, "cluster-cidrs"},
		{"unknown memory limit mode", func(c *Config) { c.MemoryLimit = 7 }, "memory limit"},
		{"policy without a client", func(c *Config) { c.NodeSource = src; c.NetworkPolicy = true }, "network-policy needs a kube client"},
		{"policy with a kubeconfig", func(c *Config) { c.NodeSource = src; c.NetworkPolicy = true; c.Kubeconfig = "/k" }, ""},
		{"policy off with a file source", func(c *Config) { c.NodeSource = src }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			tt.change(&cfg)
			_, err := New(cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

func TestNewFillsDefaults(t *testing.T) {
	a, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.CNIBridge != dataplane.DefaultBridge {
		t.Errorf("bridge %q, want %q", a.cfg.CNIBridge, dataplane.DefaultBridge)
	}
	if !slices.Equal(a.cfg.ClusterCIDRs, dataplane.DefaultClusterCIDRs) {
		t.Errorf("cluster cidrs %v, want %v", a.cfg.ClusterCIDRs, dataplane.DefaultClusterCIDRs)
	}
	if a.log == nil {
		t.Error("no logger")
	}
}

// greetRecorder is a device that records the keys it is asked to greet.
type greetRecorder struct {
	fakeDevice
	greeted, greetedSilent []wgtypes.Key
}

func (d *greetRecorder) Greet(keys ...wgtypes.Key) { d.greeted = append(d.greeted, keys...) }
func (d *greetRecorder) GreetSilent(keys ...wgtypes.Key) {
	d.greetedSilent = append(d.greetedSilent, keys...)
}

// writeOnly is a mesh.Device whose writes succeed or fail as told.
type writeOnly struct{ err error }

func (w writeOnly) Device() (*wgtypes.Device, error) { return &wgtypes.Device{}, nil }

func (w writeOnly) ConfigureDevice(wgtypes.Config) error { return w.err }

func TestGreetingDeviceGreetsAddedPeersWithEndpoints(t *testing.T) {
	k := func(b byte) wgtypes.Key { return wgtypes.Key{b} }
	ep := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 12), Port: 51820}
	cfg := wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: k(1), Endpoint: ep},                   // added: greeted
		{PublicKey: k(2)},                                 // added without endpoint: cannot be greeted
		{PublicKey: k(3), Endpoint: ep, UpdateOnly: true}, // endpoint written: greeted if it has no session
		{PublicKey: k(4), Remove: true},
		{PublicKey: k(5), UpdateOnly: true, ReplaceAllowedIPs: true}, // no endpoint written: left alone
	}}
	tests := []struct {
		name       string
		writeErr   error
		want       []wgtypes.Key
		wantSilent []wgtypes.Key
	}{
		{name: "write ok", want: []wgtypes.Key{k(1)}, wantSilent: []wgtypes.Key{k(3)}},
		// The peers before the failing line exist; the device ignores
		// the others.
		{name: "write failed", writeErr: errors.New("uapi: broken"), want: []wgtypes.Key{k(1)}, wantSilent: []wgtypes.Key{k(3)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &greetRecorder{}
			err := greetingDevice{writeOnly{err: tt.writeErr}, dev}.ConfigureDevice(cfg)
			if !errors.Is(err, tt.writeErr) {
				t.Fatalf("err = %v, want %v", err, tt.writeErr)
			}
			if d := cmp.Diff(tt.want, dev.greeted); d != "" {
				t.Errorf("greeted (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.wantSilent, dev.greetedSilent); d != "" {
				t.Errorf("greeted if silent (-want +got):\n%s", d)
			}
		})
	}
}
