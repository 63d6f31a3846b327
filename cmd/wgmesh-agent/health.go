package main

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/wgmesh/wgmesh/mesh"
)

// health answers the DaemonSet's probes from the reconciler's status.
// /healthz: the WireGuard device is running. /readyz: additionally the node
// cache has synced and the last reconcile pass succeeded, so a rolling
// update moves on only once this node is meshed.
type health struct {
	deviceDone <-chan struct{}

	mu     sync.Mutex
	status mesh.Status
	seen   bool
}

func newHealth(deviceDone <-chan struct{}) *health {
	return &health{deviceDone: deviceDone}
}

// observe is the reconciler's OnReconcile hook.
func (h *health) observe(s mesh.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.status, h.seen = s, true
}

func (h *health) deviceUp() bool {
	select {
	case <-h.deviceDone:
		return false
	default:
		return true
	}
}

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.deviceUp() {
			http.Error(w, "wireguard device stopped", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.deviceUp() {
			http.Error(w, "wireguard device stopped", http.StatusServiceUnavailable)
			return
		}
		h.mu.Lock()
		s, seen := h.status, h.seen
		h.mu.Unlock()
		switch {
		case !seen:
			http.Error(w, "no reconcile pass yet", http.StatusServiceUnavailable)
		case !s.Synced:
			http.Error(w, "node cache not synced", http.StatusServiceUnavailable)
		case s.Err != nil:
			http.Error(w, "last reconcile failed: "+s.Err.Error(), http.StatusServiceUnavailable)
		default:
			fmt.Fprintf(w, "ready: %d peers, %d excluded\n", len(s.Peers), len(s.Excluded))
		}
	})
	return mux
}
