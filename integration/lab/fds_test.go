package lab

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestCloseInheritedOnExec: a descriptor inherited without close-on-exec
// (as flock passes its lock to go test) must not reach a child the suite
// starts.
func TestCloseInheritedOnExec(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "lock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Dup without O_CLOEXEC: what an inherited descriptor looks like.
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	childHas := func() bool {
		out, err := exec.Command("ls", "/proc/self/fd").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range strings.Fields(string(out)) {
			if s == strconv.Itoa(fd) {
				return true
			}
		}
		return false
	}
	if !childHas() {
		t.Fatalf("descriptor %d without close-on-exec did not reach the child: the test cannot see the leak", fd)
	}
	CloseInheritedOnExec()
	if childHas() {
		t.Errorf("descriptor %d still reaches a child after CloseInheritedOnExec", fd)
	}
}
