package lab

import (
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// leaderExitEnv makes the test binary a process whose main thread exits
// while its other threads run on: the state a killed multi-threaded daemon
// passes through (leader a zombie, descriptors still open).
const leaderExitEnv = "WGMESH_LAB_TEST_LEADER_EXIT"

func init() {
	// The main goroutine stays on the main thread through TestMain.
	runtime.LockOSThread()
}

func TestMain(m *testing.M) {
	if os.Getenv(leaderExitEnv) == "1" {
		go func() {
			time.Sleep(time.Minute)
			os.Exit(0)
		}()
		// SYS_EXIT ends this thread only (os.Exit ends the group).
		syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
	}
	os.Exit(m.Run())
}

// TestProcAliveWhileThreadsExit: a process whose leader is a zombie but
// whose other threads still run counts as alive, so that KillAgent returns
// only once the agent's descriptors (its TUN) are closed.
func TestProcAliveWhileThreadsExit(t *testing.T) {
	p, err := startDetached([]string{os.Args[0]}, filepath.Join(t.TempDir(), "leader.log"), append(os.Environ(), leaderExitEnv+"=1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(p.PID, syscall.SIGKILL) })
	deadline := time.Now().Add(10 * time.Second)
	for procState(p.PID) != "Z" {
		if time.Now().After(deadline) {
			t.Fatalf("leader never became a zombie (state %q)", procState(p.PID))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !p.Alive() {
		t.Fatal("a process with a zombie leader and running threads counts as gone")
	}
	if err := p.stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Error("alive after SIGKILL and stop")
	}
}
