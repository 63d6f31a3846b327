package metrics

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// fakeDevice is a DeviceReader whose content tests change between scrapes.
type fakeDevice struct {
	mu  sync.Mutex
	dev wgtypes.Device
	err error
}

func (f *fakeDevice) Device() (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	d := f.dev
	d.Peers = append([]wgtypes.Peer(nil), f.dev.Peers...)
	return &d, nil
}

func (f *fakeDevice) set(fn func(*wgtypes.Device)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.dev)
}

func key(b byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	return k
}

var hs = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func fixture() (*fakeDevice, mesh.Status) {
	dev := &fakeDevice{dev: wgtypes.Device{Name: "wgmesh0", Peers: []wgtypes.Peer{
		{PublicKey: key(2), LastHandshakeTime: hs, ReceiveBytes: 100, TransmitBytes: 200,
			Endpoint: &net.UDPAddr{IP: net.IPv4(198, 51, 100, 11), Port: 51820}},
		{PublicKey: key(3), ReceiveBytes: 0, TransmitBytes: 148},
		{PublicKey: key(9), ReceiveBytes: 7, TransmitBytes: 8}, // no node explains it
	}}}
	st := mesh.Status{
		LastReconcile: hs.Add(time.Second), Duration: 40 * time.Millisecond, Synced: true,
		Peers: []mesh.Peer{
			{Node: "node-b", PublicKey: key(2), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
			{Node: "node-c", PublicKey: key(3), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
			{Node: "node-d", PublicKey: key(4), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
		},
		Excluded: []mesh.Exclusion{
			{Node: "node-x", Reason: mesh.ReasonNoPublicKey, Err: errors.New("missing")},
			{Node: "node-y", Reason: mesh.ReasonNoPublicKey, Err: errors.New("missing")},
			{Node: "node-z", Reason: mesh.ReasonBadEndpoint, Err: errors.New("bad")},
		},
		Degraded:   []mesh.Exclusion{{Node: "node-c", Reason: mesh.ReasonUnresolvable, Err: errors.New("dns")}},
		Reconciles: 5, Errors: 2, DeviceWrites: 3,
	}
	return dev, st
}

// series gathers the registry and returns the family's metrics by label
// set ("k=v,k=v") with their value.
func series(t *testing.T, m *Metrics, name string) map[string]float64 {
	t.Helper()
	fams, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			var labels []string
			for _, l := range mt.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(labels, ",")] = value(mt)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func TestPerPeerSeries(t *testing.T) {
	dev, st := fixture()
	m := New(Config{Device: dev})
	m.Observe(st)

	kb, kc, k9 := key(2).String(), key(3).String(), key(9).String()
	wantHS := map[string]float64{
		"node=node-b,public_key=" + kb: float64(hs.Unix()),
		"node=node-c,public_key=" + kc: 0,
		"node=,public_key=" + k9:       0,
	}
	if d := cmp.Diff(wantHS, series(t, m, "wgmesh_peer_latest_handshake_timestamp_seconds")); d != "" {
		t.Errorf("handshake series (-want +got):\n%s", d)
	}
	wantRx := map[string]float64{"node=node-b,public_key=" + kb: 100, "node=node-c,public_key=" + kc: 0, "node=,public_key=" + k9: 7}
	if d := cmp.Diff(wantRx, series(t, m, "wgmesh_peer_receive_bytes_total")); d != "" {
		t.Errorf("rx series (-want +got):\n%s", d)
	}
	wantTx := map[string]float64{"node=node-b,public_key=" + kb: 200, "node=node-c,public_key=" + kc: 148, "node=,public_key=" + k9: 8}
	if d := cmp.Diff(wantTx, series(t, m, "wgmesh_peer_transmit_bytes_total")); d != "" {
		t.Errorf("tx series (-want +got):\n%s", d)
	}

	// Read at scrape time: a change on the device shows without a pass.
	dev.set(func(d *wgtypes.Device) {
		d.Peers[0].ReceiveBytes = 5000
		d.Peers = d.Peers[:2]
	})
	got := series(t, m, "wgmesh_peer_receive_bytes_total")
	if len(got) != 2 || got["node=node-b,public_key="+kb] != 5000 {
		t.Errorf("after device change rx = %v, want 2 series with node-b at 5000", got)
	}
	if got := series(t, m, "wgmesh_peers_configured"); got[""] != 2 {
		t.Errorf("peers_configured = %v, want 2", got)
	}
}

func TestMeshSeries(t *testing.T) {
	dev, st := fixture()
	m := New(Config{Device: dev, Version: "v1.2.3"})
	m.Observe(st)
	st.Duration = 2 * time.Second
	m.Observe(st)

	one := func(name string, want float64) {
		t.Helper()
		got := series(t, m, name)
		if len(got) != 1 || got[""] != want {
			t.Errorf("%s = %v, want a single series %v", name, got, want)
		}
	}
	one("wgmesh_peers_desired", 3)
	one("wgmesh_peers_configured", 3)
	one("wgmesh_device_up", 1)
	one("wgmesh_reconciles_total", 5)
	one("wgmesh_reconcile_errors_total", 2)
	one("wgmesh_device_writes_total", 3)
	one("wgmesh_last_reconcile_success", 1)
	one("wgmesh_node_cache_synced", 1)
	one("wgmesh_last_reconcile_timestamp_seconds", float64(hs.Add(time.Second).Unix()))
	one("wgmesh_reconcile_duration_seconds", 2) // sample count

	excl := series(t, m, "wgmesh_nodes_excluded")
	if len(excl) != len(KnownReasons) {
		t.Errorf("nodes_excluded has %d series, want one per known reason (%d)", len(excl), len(KnownReasons))
	}
	if excl["reason=no-public-key"] != 2 || excl["reason=bad-endpoint"] != 1 || excl["reason=no-pod-cidr"] != 0 {
		t.Errorf("nodes_excluded = %v", excl)
	}
	if d := series(t, m, "wgmesh_peers_degraded"); d["reason=unresolvable-endpoint"] != 1 {
		t.Errorf("peers_degraded = %v", d)
	}
	bi := series(t, m, "wgmesh_build_info")
	if len(bi) != 1 {
		t.Fatalf("build_info = %v", bi)
	}
	for labels, v := range bi {
		if v != 1 || !strings.Contains(labels, "version=v1.2.3") || !strings.Contains(labels, "goversion=go") {
			t.Errorf("build_info %s = %v", labels, v)
		}
	}

	// The histogram's buckets saw one fast and one slow pass.
	const want = `
# HELP wgmesh_reconcile_duration_seconds Duration of reconcile passes.
# TYPE wgmesh_reconcile_duration_seconds histogram
wgmesh_reconcile_duration_seconds_bucket{le="0.001"} 0
wgmesh_reconcile_duration_seconds_bucket{le="0.0025"} 0
wgmesh_reconcile_duration_seconds_bucket{le="0.005"} 0
wgmesh_reconcile_duration_seconds_bucket{le="0.01"} 0
wgmesh_reconcile_duration_seconds_bucket{le="0.025"} 0
wgmesh_reconcile_duration_seconds_bucket{le="0.05"} 1
wgmesh_reconcile_duration_seconds_bucket{le="0.1"} 1
wgmesh_reconcile_duration_seconds_bucket{le="0.25"} 1
wgmesh_reconcile_duration_seconds_bucket{le="0.5"} 1
wgmesh_reconcile_duration_seconds_bucket{le="1"} 1
wgmesh_reconcile_duration_seconds_bucket{le="2.5"} 2
wgmesh_reconcile_duration_seconds_bucket{le="5"} 2
wgmesh_reconcile_duration_seconds_bucket{le="10"} 2
wgmesh_reconcile_duration_seconds_bucket{le="30"} 2
wgmesh_reconcile_duration_seconds_bucket{le="+Inf"} 2
wgmesh_reconcile_duration_seconds_sum 2.04
wgmesh_reconcile_duration_seconds_count 2
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), "wgmesh_reconcile_duration_seconds"); err != nil {
		t.Error(err)
	}
}

func TestDeviceUnreadable(t *testing.T) {
	dev, st := fixture()
	dev.err = errors.New("interface gone")
	m := New(Config{Device: dev})
	m.Observe(st)
	if got := series(t, m, "wgmesh_device_up"); got[""] != 0 {
		t.Errorf("device_up = %v, want 0", got)
	}
	if got := series(t, m, "wgmesh_peer_receive_bytes_total"); len(got) != 0 {
		t.Errorf("per-peer series without a device: %v", got)
	}
	// The mesh series still come from the last pass.
	if got := series(t, m, "wgmesh_peers_desired"); got[""] != 3 {
		t.Errorf("peers_desired = %v", got)
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestReadyzTransitions(t *testing.T) {
	dev, st := fixture()
	var devErr error
	m := New(Config{Device: dev, DeviceUp: func() error { return devErr }})
	h := m.Handler()

	steps := []struct {
		name     string
		do       func()
		wantCode int
		wantBody string
	}{
		{"before any pass", func() {}, 503, "no reconcile pass yet"},
		{"unsynced pass", func() { s := st; s.Synced = false; m.Observe(s) }, 503, "node cache not synced"},
		{"failed pass", func() { s := st; s.Err = errors.New("configure device: boom"); m.Observe(s) }, 503, "last reconcile failed: configure device: boom"},
		{"good pass", func() { m.Observe(st) }, 200, "ready: 3 peers desired, 3 nodes excluded"},
		{"device stops", func() { devErr = errors.New("tun closed") }, 503, "wireguard device down: tun closed"},
		{"device back", func() { devErr = nil }, 200, "ready"},
		{"failing again", func() { s := st; s.Err = errors.New("list nodes: x"); m.Observe(s) }, 503, "last reconcile failed"},
	}
	for _, s := range steps {
		s.do()
		code, body := get(t, h, "/readyz")
		if code != s.wantCode || !strings.Contains(body, s.wantBody) {
			t.Errorf("%s: /readyz = %d %q, want %d containing %q", s.name, code, body, s.wantCode, s.wantBody)
		}
		// Liveness never depends on the mesh.
		if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("%s: /healthz = %d %q", s.name, code, body)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	dev, st := fixture()
	m := New(Config{Device: dev})
	m.Observe(st)
	code, body := get(t, m.Handler(), "/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	n := 0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "wgmesh_peer_latest_handshake_timestamp_seconds{") {
			n++
		}
	}
	if n != 3 {
		t.Errorf("/metrics has %d handshake series, want one per device peer (3):\n%s", n, body)
	}
	for _, want := range []string{`node="node-b"`, "go_goroutines", "process_", "wgmesh_build_info{"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
