package main

import (
	"strings"
	"testing"
)

func TestConfigNetworkPolicy(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		file    string
		want    bool
		wantErr string
	}{
		{name: "default on", want: true},
		{name: "flag off", args: []string{"--network-policy=false"}, want: false},
		{name: "env off", env: "false", want: false},
		{name: "file off", file: "network-policy: false\n", want: false},
		{name: "flag beats env", args: []string{"--network-policy=true"}, env: "false", want: true},
		{name: "bad env value", env: "maybe", wantErr: "network-policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--node-name=n1"}, tt.args...)
			if tt.env != "" {
				t.Setenv("WGMESH_NETWORK_POLICY", tt.env)
			}
			if tt.file != "" {
				args = append(args, "--config="+writeConfig(t, tt.file))
			}
			got, err := load(t, args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one about %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.NetworkPolicy != tt.want {
				t.Errorf("NetworkPolicy = %v, want %v", got.NetworkPolicy, tt.want)
			}
		})
	}
}
