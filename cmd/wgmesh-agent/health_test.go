package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
)

func TestHealthProbes(t *testing.T) {
	tests := []struct {
		name        string
		deviceDown  bool
		status      *mesh.Status
		healthz     int
		readyz      int
		readyzMatch string
	}{
		{name: "before the first pass", healthz: 200, readyz: 503, readyzMatch: "no reconcile"},
		{name: "not synced", status: &mesh.Status{}, healthz: 200, readyz: 503, readyzMatch: "not synced"},
		{name: "failed pass", status: &mesh.Status{Synced: true, Err: errors.New("boom")}, healthz: 200, readyz: 503, readyzMatch: "boom"},
		{name: "ready", status: &mesh.Status{Synced: true, Peers: make([]mesh.Peer, 2)}, healthz: 200, readyz: 200, readyzMatch: "2 peers"},
		{name: "device stopped", deviceDown: true, status: &mesh.Status{Synced: true}, healthz: 503, readyz: 503, readyzMatch: "device stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			if tt.deviceDown {
				close(done)
			}
			h := newHealth(done)
			if tt.status != nil {
				h.observe(*tt.status)
			}
			srv := httptest.NewServer(h.handler())
			defer srv.Close()
			for _, probe := range []struct {
				path  string
				code  int
				match string
			}{{"/healthz", tt.healthz, ""}, {"/readyz", tt.readyz, tt.readyzMatch}} {
				resp, err := http.Get(srv.URL + probe.path)
				if err != nil {
					t.Fatal(err)
				}
				raw, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				buf, n := raw, len(raw)
				if resp.StatusCode != probe.code {
					t.Errorf("%s = %d, want %d (%s)", probe.path, resp.StatusCode, probe.code, buf[:n])
				}
				if !strings.Contains(string(buf[:n]), probe.match) {
					t.Errorf("%s body %q lacks %q", probe.path, buf[:n], probe.match)
				}
			}
		})
	}
}
