package wgdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"testing"

	"golang.zx2c4.com/wireguard/ipc"
)

// TestSocketPath checks SocketPath against the file wireguard-go's ipc
// really creates (and removes) for an interface name: the path is
// unexported there, so a change in a new wireguard-go would show here.
func TestSocketPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a socket in " + SocketDir)
	}
	name := fmt.Sprintf("wgmt%d", os.Getpid()%100000000)
	path := SocketPath(name)
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s exists before the test (stat: %v); not touching it", path, err)
	}
	t.Cleanup(func() { os.Remove(path) })

	f, err := ipc.UAPIOpen(name)
	if err != nil {
		t.Fatalf("ipc.UAPIOpen(%q): %v", name, err)
	}
	l, err := ipc.UAPIListen(name, f)
	f.Close()
	if err != nil {
		t.Fatalf("ipc.UAPIListen(%q): %v", name, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		t.Fatalf("ipc made no socket at SocketPath(%q) = %s: %v", name, path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("%s is %v, want a socket", path, fi.Mode().Type())
	}
	// Closing the listener removes the socket: the same file, not a
	// leftover of another run.
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still there after the listener closed (stat: %v)", path, err)
	}
}
