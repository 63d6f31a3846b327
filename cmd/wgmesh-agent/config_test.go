package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// load parses args (and the environment set by the test) like main does.
func load(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	cmd := newCommand()
	if err := cmd.Flags().Parse(args); err != nil {
		t.Fatalf("parse flags: %v", err)
	}
	v, err := newViper(cmd.Flags())
	if err != nil {
		return Config{}, err
	}
	return loadConfig(v)
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	got, err := load(t, "--node-name=n1")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		NodeName:     "n1",
		Interface:    "wgmesh0",
		ListenPort:   51820,
		KeyFile:      "/var/lib/wgmesh/private.key",
		MTU:          0, // auto
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		StateDir:     "/var/lib/wgmesh",
		RunDir:       "/var/run/wgmesh",
		CNIConfDir:   "/etc/cni/net.d",
		CNIBridge:    "wgmesh-br0",
		Resync:       30 * time.Second,
		LogFormat:    "text",
		LogLevel:     slog.LevelInfo,
		// The DaemonSet's probes and scrape annotation use this port.
		MetricsAddress: ":9585",
		NetworkPolicy:  true,
		MaxInflight:    256,
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestConfigPrecedenceFlagOverEnvOverFile(t *testing.T) {
	file := writeConfig(t, `
node-name: from-file
listen-port: 1111
mtu: 1300
interface: wgfile0
persistent-keepalive: 25s
cluster-cidrs:
  - 10.244.0.0/16
  - fd00:10:244::/56
log-format: json
`)
	t.Setenv("WGMESH_LISTEN_PORT", "2222")
	t.Setenv("WGMESH_INTERFACE", "wgenv0")
	t.Setenv("WGMESH_CNI_CONF_DIR", "/tmp/cni-from-env")
	got, err := load(t, "--config="+file, "--listen-port=3333")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"node-name from file", got.NodeName, "from-file"},
		{"listen-port flag wins", got.ListenPort, 3333},
		{"interface env beats file", got.Interface, "wgenv0"},
		{"cni-conf-dir from env (dash → underscore)", got.CNIConfDir, "/tmp/cni-from-env"},
		{"mtu from file", got.MTU, 1300},
		{"keepalive from file", got.Keepalive, 25 * time.Second},
		{"log format from file", got.LogFormat, "json"},
		{"cluster cidrs from a YAML list", len(got.ClusterCIDRs), 2},
	}
	for _, c := range checks {
		if !cmp.Equal(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigValues(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(Config) string // "" when fine
		wantErr string              // substring; "" = must succeed
	}{
		{
			name:  "mtu number",
			args:  []string{"--mtu=1380"},
			check: func(c Config) string { return diffInt(c.MTU, 1380) },
		},
		{
			name:  "mtu AUTO is case-insensitive",
			args:  []string{"--mtu=AUTO"},
			check: func(c Config) string { return diffInt(c.MTU, 0) },
		},
		{name: "mtu junk", args: []string{"--mtu=big"}, wantErr: "mtu"},
		{name: "mtu too small", args: []string{"--mtu=600"}, wantErr: "mtu"},
		{
			name: "cluster cidrs comma list from env",
			env:  map[string]string{"WGMESH_CLUSTER_CIDRS": "10.244.0.0/16, fd00:10:244::/56"},
			check: func(c Config) string {
				return diffInt(len(c.ClusterCIDRs), 2)
			},
		},
		{name: "cluster cidr with host bits", args: []string{"--cluster-cidrs=10.244.1.1/16"}, wantErr: "host bits"},
		{name: "cluster cidr junk", args: []string{"--cluster-cidrs=banana"}, wantErr: "cluster-cidrs"},
		{name: "cluster cidrs empty", args: []string{"--cluster-cidrs="}, wantErr: "at least one"},
		{name: "listen port junk from env", env: map[string]string{"WGMESH_LISTEN_PORT": "fifty"}, wantErr: "listen-port"},
		{name: "listen port out of range", args: []string{"--listen-port=70000"}, wantErr: "listen-port"},
		{
			name:  "keepalive from env",
			env:   map[string]string{"WGMESH_PERSISTENT_KEEPALIVE": "25s"},
			check: func(c Config) string { return diffInt(int(c.Keepalive/time.Second), 25) },
		},
		{name: "keepalive fractional", args: []string{"--persistent-keepalive=1500ms"}, wantErr: "whole seconds"},
		{name: "keepalive junk from env", env: map[string]string{"WGMESH_PERSISTENT_KEEPALIVE": "often"}, wantErr: "persistent-keepalive"},
		{name: "resync too short", args: []string{"--resync=10ms"}, wantErr: "resync"},
		{name: "bad endpoint", args: []string{"--endpoint=no-port"}, wantErr: "endpoint"},
		{
			name:  "endpoint",
			args:  []string{"--endpoint=203.0.113.7:51999"},
			check: func(c Config) string { return diffStr(c.Endpoint, "203.0.113.7:51999") },
		},
		{name: "log format", args: []string{"--log-format=xml"}, wantErr: "log-format"},
		{name: "log level", args: []string{"--log-level=loud"}, wantErr: "log-level"},
		{
			name:  "log level debug",
			args:  []string{"--log-level=debug"},
			check: func(c Config) string { return diffInt(int(c.LogLevel), int(slog.LevelDebug)) },
		},
		{name: "interface too long", args: []string{"--interface=wgmesh-interface0"}, wantErr: "15 bytes"},
		{name: "bridge equals interface", args: []string{"--cni-bridge=wgmesh0"}, wantErr: "both"},
		{name: "empty key file", args: []string{"--key-file="}, wantErr: "key-file must not be empty"},
		{
			name:  "max inflight from env",
			env:   map[string]string{"WGMESH_MAX_INFLIGHT": "1024"},
			check: func(c Config) string { return diffInt(maxInflight(c.MaxInflight), 1024) },
		},
		{
			name:  "max inflight 0 is no bound",
			args:  []string{"--max-inflight=0"},
			check: func(c Config) string { return diffInt(maxInflight(c.MaxInflight), -1) },
		},
		{name: "max inflight below a batch", args: []string{"--max-inflight=64"}, wantErr: "max-inflight 64"},
		{name: "max inflight negative", args: []string{"--max-inflight=-1"}, wantErr: "max-inflight -1"},
		{name: "max inflight junk", env: map[string]string{"WGMESH_MAX_INFLIGHT": "lots"}, wantErr: "max-inflight"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := load(t, append([]string{"--node-name=n1"}, tt.args...)...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if msg := tt.check(c); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func TestConfigNodeNameRequiredAndAllErrorsReported(t *testing.T) {
	_, err := load(t, "--mtu=tiny", "--log-format=xml")
	if err == nil {
		t.Fatal("accepted a config without node-name")
	}
	for _, want := range []string{"node-name is required", "mtu", "log-format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestConfigNodeNameFromEnv(t *testing.T) {
	t.Setenv("WGMESH_NODE_NAME", "from-downward-api")
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "from-downward-api" {
		t.Errorf("node name = %q", c.NodeName)
	}
}

func TestConfigMissingFile(t *testing.T) {
	_, err := load(t, "--node-name=n1", "--config="+filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("error = %v, want one naming the missing file", err)
	}
}

func diffInt(got, want int) string {
	if got != want {
		return fmt.Sprintf("got %d, want %d", got, want)
	}
	return ""
}

func diffStr(got, want string) string {
	if got != want {
		return fmt.Sprintf("got %q, want %q", got, want)
	}
	return ""
}
