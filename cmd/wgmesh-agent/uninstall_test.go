package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUninstallValidatesOnlyItsKeys(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "bad cluster cidr", args: []string{"--cluster-cidrs=10.244.0.1/16"}, want: "cluster-cidrs"},
		{name: "long bridge name", args: []string{"--cni-bridge=averyveryverylongname"}, want: "cni-bridge"},
		{name: "agent-only flag is unknown", args: []string{"--listen-port=1"}, want: "unknown flag: --listen-port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WGMESH_NODE_NAME", "")
			cmd := newCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append([]string{"uninstall"}, tt.args...))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "node-name") {
				t.Errorf("uninstall complained about node-name: %v", err)
			}
		})
	}
}

func TestRelevantProblemsIgnoresNodeName(t *testing.T) {
	err := errors.Join(errors.New("node-name is required (flag --node-name or env WGMESH_NODE_NAME)"),
		errors.New("listen-port 0 is not in 1-65535"))
	if got := relevantProblems(err); len(got) != 0 {
		t.Errorf("relevantProblems = %q, want none", got)
	}
	err = errors.Join(err, errors.New("cluster-cidrs: 10.244.0.1/16 has host bits set"))
	if got := relevantProblems(err); len(got) != 1 || !strings.HasPrefix(got[0], "cluster-cidrs") {
		t.Errorf("relevantProblems = %q, want the cluster-cidrs one", got)
	}
}

func TestUninstallRefusesWhileAnAgentRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		// /var/run/wireguard is root's; the refusal is also covered by
		// the root datapath suite.
		t.Log("not root: checking agentRunning on a missing socket only")
		if agentRunning("wgmesh-nonexistent") {
			t.Error("agentRunning true without a socket")
		}
		return
	}
	dir := "/var/run/wireguard"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("wgut%d", os.Getpid()%1000000)
	sock := filepath.Join(dir, name+".sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); os.Remove(sock) })
	err = uninstall(t.Context(), Config{Interface: name}, &bytes.Buffer{})
	if !errors.Is(err, errAgentRunning) {
		t.Fatalf("uninstall with a live socket: error = %v, want errAgentRunning", err)
	}
}
