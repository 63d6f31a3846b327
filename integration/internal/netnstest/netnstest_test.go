package netnstest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sessionOf reads a process's session id (field 6 of /proc/PID/stat).
func sessionOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	sid, err := strconv.Atoi(f[3]) // state, ppid, pgrp, session
	if err != nil {
		t.Fatal(err)
	}
	return sid
}

func TestStartSession(t *testing.T) {
	RequireRoot(t)
	ns := NewNS(t, Prefix(t)+"s")
	own, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	shared := ns.Start(t, "shared", nil, "sleep", "60")
	alone := ns.StartSession(t, "alone", nil, "sleep", "60")
	// The session is set in the child before it execs ip netns exec
	// (which execs sleep, keeping the pid), so it reads true at once.
	if got := sessionOf(t, shared.Pid()); got != own {
		t.Errorf("Start: session %d, want the test's %d", got, own)
	}
	if got := sessionOf(t, alone.Pid()); got != alone.Pid() {
		t.Errorf("StartSession: session %d, want its own (%d)", got, alone.Pid())
	}
	for _, p := range []*Proc{shared, alone} {
		if err := p.Stop(syscall.SIGTERM, 5*time.Second); err == nil {
			t.Errorf("%s: sleep ended with status 0 after SIGTERM", p.Name)
		}
	}
}
