package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestDeviceError(t *testing.T) {
	cases := []struct {
		err      error
		sentinel error
		want     string
	}{
		{fmt.Errorf("dial: %w", syscall.EACCES), ErrPermissionDenied, "run as root"},
		{os.ErrPermission, ErrPermissionDenied, "/var/run/wireguard/wgmesh0.sock is root-only"},
		{syscall.EPERM, ErrPermissionDenied, "run as root"},
		{os.ErrNotExist, ErrNoInterface, "is wgmesh-agent running on this node, with interface wgmesh0?"},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), ErrNoInterface, "exists but no process serves it"},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), ErrNoInterface, "exists but no process serves it"},
		{errors.New("weird"), nil, "read WireGuard interface wgmesh0: weird"},
	}
	for _, c := range cases {
		got := deviceError("wgmesh0", c.err)
		if c.sentinel != nil && !errors.Is(got, c.sentinel) {
			t.Errorf("deviceError(%v) = %v, want it to wrap %v", c.err, got, c.sentinel)
		}
		if !strings.Contains(got.Error(), c.want) {
			t.Errorf("deviceError(%v) = %q, want it to mention %q", c.err, got, c.want)
		}
	}
}

// TestMissingInterface runs the command against an interface that does
// not exist: a clear error, whatever the caller's privileges.
func TestMissingInterface(t *testing.T) {
	var out, errb bytes.Buffer
	cmd := newCommand(&out, &errb)
	cmd.SetArgs([]string{"show", "-i", "wgmtest-none0", "--run-dir", t.TempDir()})
	err := cmd.Execute()
	if !errors.Is(err, ErrNoInterface) && !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("err = %v, want ErrNoInterface (or ErrPermissionDenied when not root)", err)
	}
	if os.Geteuid() == 0 && !errors.Is(err, ErrNoInterface) {
		t.Fatalf("as root: err = %v, want ErrNoInterface", err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"show", "--handshake-timeout", "soon"},
		{"show", "--handshake-timeout", "-1s"},
		{"check", "-i", ""},
	} {
		var out, errb bytes.Buffer
		cmd := newCommand(&out, &errb)
		cmd.SetArgs(args)
		if err := cmd.Execute(); err == nil || errors.Is(err, ErrNoInterface) {
			t.Errorf("%v: err = %v, want a flag error before touching the device", args, err)
		}
	}
}

// TestAgentConfigFile: the interface comes from the agent's config file
// unless a flag overrides it.
func TestAgentConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfg := dir + "/agent.yaml"
	if err := os.WriteFile(cfg, []byte("interface: wgmtest-cfg0\nrun-dir: "+dir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--config", cfg}, "wgmtest-cfg0"},
		{[]string{"check", "--config", cfg, "-i", "wgmtest-flag0"}, "wgmtest-flag0"},
	} {
		var out, errb bytes.Buffer
		cmd := newCommand(&out, &errb)
		cmd.SetArgs(c.args)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to name interface %s", c.args, err, c.want)
		}
	}
}
