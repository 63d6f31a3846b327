// Package metrics serves the agent's Prometheus metrics and its health
// endpoints. Per-peer series (latest handshake, bytes received and sent,
// labelled by node name) are read from the WireGuard device at scrape
// time, so they are never stale; mesh-level series come from the
// reconciler's status after each pass (see Metrics.Observe).
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

const namespace = "wgmesh"

// DeviceReader reads the WireGuard device; mesh.Device and wgctrl's client
// bound to a name have this method.
type DeviceReader interface {
	Device() (*wgtypes.Device, error)
}

// Config configures Metrics.
type Config struct {
	// Device is read on every scrape for the per-peer series.
	Device DeviceReader
	// DeviceUp reports whether the WireGuard device is running (nil error)
	// for /readyz; nil means "always up".
	DeviceUp func() error
	// Version is reported in wgmesh_build_info; empty means the main
	// module's version from the binary's build info.
	Version string
	Logger  *slog.Logger
}

// KnownReasons are the exclusion reasons always exported (as 0 when no
// node has them), so dashboards and alerts see a stable set of series.
var KnownReasons = []mesh.Reason{
	mesh.ReasonNoPublicKey, mesh.ReasonBadPublicKey, mesh.ReasonNoEndpoint, mesh.ReasonBadEndpoint,
	mesh.ReasonNoPodCIDR, mesh.ReasonBadPodCIDR, mesh.ReasonBadKeepalive, mesh.ReasonDuplicateKey,
	mesh.ReasonOverlappingCIDR, mesh.ReasonUnresolvable, mesh.ReasonSameKeyAsSelf, mesh.ReasonOverlapsSelfCIDR,
}

// Metrics holds the agent's registry. Create it with New, feed it with
// Observe (a mesh.Config.OnReconcile hook), serve it with Handler.
type Metrics struct {
	cfg      Config
	log      *slog.Logger
	reg      *prometheus.Registry
	duration prometheus.Histogram

	mu     sync.Mutex
	status mesh.Status
	seen   bool
}

var (
	peerLabels       = []string{"node", "public_key"}
	descHandshake    = desc("peer_latest_handshake_timestamp_seconds", "Unix time of the latest completed handshake with the peer (0 = none yet).", peerLabels...)
	descRx           = desc("peer_receive_bytes_total", "Bytes received from the peer by the WireGuard device.", peerLabels...)
	descTx           = desc("peer_transmit_bytes_total", "Bytes sent to the peer by the WireGuard device.", peerLabels...)
	descDeviceUp     = desc("device_up", "1 if the WireGuard device could be read during this scrape.")
	descConfigured   = desc("peers_configured", "Peers configured on the WireGuard device.")
	descDesired      = desc("peers_desired", "Peers the agent wants (other nodes in the mesh), as of the last reconcile.")
	descExcluded     = desc("nodes_excluded", "Nodes left out of the mesh, by reason, as of the last reconcile.", "reason")
	descDegraded     = desc("peers_degraded", "Peers kept with a problem (e.g. unresolvable endpoint), by reason.", "reason")
	descReconciles   = desc("reconciles_total", "Reconcile passes since the agent started.")
	descErrors       = desc("reconcile_errors_total", "Failed reconcile passes since the agent started.")
	descLastTime     = desc("last_reconcile_timestamp_seconds", "Unix time the last reconcile pass finished (0 = none yet).")
	descLastOK       = desc("last_reconcile_success", "1 if the last reconcile pass succeeded.")
	descSynced       = desc("node_cache_synced", "1 if the Node informer had synced at the last reconcile pass.")
	descDeviceWrites = desc("device_writes_total", "WireGuard device configuration writes since the agent started.")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

// New builds the registry. It does no I/O.
func New(cfg Config) *Metrics {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		cfg: cfg,
		log: log,
		reg: prometheus.NewRegistry(),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "reconcile_duration_seconds",
			Help:      "Duration of reconcile passes.",
			Buckets:   []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	version, revision := buildVersion(cfg.Version)
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   namespace,
		Name:        "build_info",
		Help:        "Build of the running agent (always 1).",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(
		m.duration,
		buildInfo,
		(*collector)(m),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// buildVersion returns the version and VCS revision to report.
func buildVersion(override string) (version, revision string) {
	version, revision = "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			version = v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	if override != "" {
		version = override
	}
	return version, revision
}

// Observe records a reconcile pass; it is a mesh.Config.OnReconcile hook.
func (m *Metrics) Observe(st mesh.Status) {
	m.mu.Lock()
	m.status, m.seen = st, true
	m.mu.Unlock()
	m.duration.Observe(st.Duration.Seconds())
}

func (m *Metrics) snapshot() (mesh.Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status, m.seen
}

// Gatherer exposes the registry (for tests and embedding).
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// collector emits the series computed at scrape time.
type collector Metrics

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHandshake, descRx, descTx, descDeviceUp, descConfigured, descDesired,
		descExcluded, descDegraded, descReconciles, descErrors, descLastTime, descLastOK, descSynced, descDeviceWrites} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	st, seen := m.snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}

	names := map[wgtypes.Key]string{}
	for _, p := range st.Peers {
		names[p.PublicKey] = p.Node
	}
	var dev *wgtypes.Device
	var err error
	if m.cfg.Device != nil {
		dev, err = m.cfg.Device.Device()
	} else {
		err = errors.New("no device configured")
	}
	if err != nil {
		m.log.Debug("metrics: cannot read the wireguard device", "err", err)
		gauge(descDeviceUp, 0)
	} else {
		gauge(descDeviceUp, 1)
		gauge(descConfigured, float64(len(dev.Peers)))
		for _, p := range dev.Peers {
			labels := []string{names[p.PublicKey], p.PublicKey.String()}
			hs := 0.0
			if !p.LastHandshakeTime.IsZero() {
				hs = float64(p.LastHandshakeTime.UnixNano()) / 1e9
			}
			gauge(descHandshake, hs, labels...)
			counter(descRx, float64(p.ReceiveBytes), labels...)
			counter(descTx, float64(p.TransmitBytes), labels...)
		}
	}

	gauge(descDesired, float64(len(st.Peers)))
	for reason, n := range byReason(st.Excluded, true) {
		gauge(descExcluded, float64(n), string(reason))
	}
	for reason, n := range byReason(st.Degraded, false) {
		gauge(descDegraded, float64(n), string(reason))
	}
	counter(descReconciles, float64(st.Reconciles))
	counter(descErrors, float64(st.Errors))
	counter(descDeviceWrites, float64(st.DeviceWrites))
	last, ok := 0.0, 0.0
	if seen && !st.LastReconcile.IsZero() {
		last = float64(st.LastReconcile.UnixNano()) / 1e9
		if st.Err == nil {
			ok = 1
		}
	}
	gauge(descLastTime, last)
	gauge(descLastOK, ok)
	gauge(descSynced, boolFloat(st.Synced))
}

// byReason counts exclusions per reason; with known, every KnownReasons
// entry is present.
func byReason(es []mesh.Exclusion, known bool) map[mesh.Reason]int {
	out := map[mesh.Reason]int{}
	if known {
		for _, r := range KnownReasons {
			out[r] = 0
		}
	}
	for _, e := range es {
		out[e.Reason]++
	}
	return out
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Ready reports why the agent is not ready, or nil: the device is up, a
// reconcile pass has run, the Node informer had synced and the last pass
// succeeded.
func (m *Metrics) Ready() error {
	if m.cfg.DeviceUp != nil {
		if err := m.cfg.DeviceUp(); err != nil {
			return fmt.Errorf("wireguard device down: %w", err)
		}
	}
	st, seen := m.snapshot()
	switch {
	case !seen:
		return errors.New("no reconcile pass yet")
	case !st.Synced:
		return errors.New("node cache not synced")
	case st.Err != nil:
		return fmt.Errorf("last reconcile failed: %w", st.Err)
	}
	return nil
}

// Handler serves /metrics (Prometheus text or protobuf), /healthz (the
// process is alive and serving) and /readyz (see Ready).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slogErrorLog{m.log},
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := m.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		st, _ := m.snapshot()
		fmt.Fprintf(w, "ready: %d peers desired, %d nodes excluded\n", len(st.Peers), len(st.Excluded))
	})
	return mux
}

type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) {
	l.log.Warn("metrics: " + strings.TrimSpace(fmt.Sprintln(v...)))
}
