package mesh_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// lockedBuffer is a bytes.Buffer for a logger that Run's goroutine writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// TestRunFollowsUnderlayMTU: an underlay MTU change reaches the dataplane
// without a Node change or a resync; a failed detection keeps the current
// MTU and is logged once while it lasts, not at every check.
func TestRunFollowsUnderlayMTU(t *testing.T) {
	var mu sync.Mutex
	detected, detectErr := 1420, error(nil)
	set := func(m int, err error) { mu.Lock(); detected, detectErr = m, err; mu.Unlock() }
	var logs lockedBuffer
	f := newFixture(t, func(c *mesh.Config) {
		c.Logger = newTestLogger(&logs)
		c.Resync = time.Hour // only the MTU check can start a pass
		c.MTUCheck = 10 * time.Millisecond
		c.DetectMTU = func() (int, error) { mu.Lock(); defer mu.Unlock(); return detected, detectErr }
	}, selfNode(), node(1))
	f.run(t)
	lastMTU := func() int {
		s, ok := f.dp.Last()
		if !ok {
			return 0
		}
		return s.MTU
	}
	waitFor(t, func() bool { return lastMTU() == 1420 })
	passes := len(f.dp.States())
	time.Sleep(50 * time.Millisecond) // five checks of an unchanged MTU
	if n := len(f.dp.States()); n != passes {
		t.Errorf("%d passes while the MTU stayed the same, want none", n-passes)
	}

	set(1320, nil) // underlay 1500 -> 1400
	waitFor(t, func() bool { return lastMTU() == 1320 })

	set(0, errors.New("no default route"))
	time.Sleep(50 * time.Millisecond) // about five failed checks
	if m := lastMTU(); m != 1320 {
		t.Errorf("after a failed detection the dataplane has MTU %d, want 1320 kept", m)
	}
	const warned = "could not detect the underlay mtu"
	if n := logs.count(warned); n != 1 {
		t.Errorf("a lasting detection failure logged %d times, want once", n)
	}
	set(1420, nil)
	waitFor(t, func() bool { return lastMTU() == 1420 })
	waitFor(t, func() bool { return logs.count("underlay mtu detected again") == 1 })
	// A new failure after the recovery is news again.
	set(0, errors.New("no default route"))
	waitFor(t, func() bool { return logs.count(warned) == 2 })
}
