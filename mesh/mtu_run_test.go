package mesh_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestRunFollowsUnderlayMTU: an underlay MTU change reaches the dataplane
// without a Node change or a resync; a failed detection keeps the current
// MTU.
func TestRunFollowsUnderlayMTU(t *testing.T) {
	var mu sync.Mutex
	detected, detectErr := 1420, error(nil)
	set := func(m int, err error) { mu.Lock(); detected, detectErr = m, err; mu.Unlock() }
	f := newFixture(t, func(c *mesh.Config) {
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
	time.Sleep(50 * time.Millisecond)
	if m := lastMTU(); m != 1320 {
		t.Errorf("after a failed detection the dataplane has MTU %d, want 1320 kept", m)
	}
	set(1420, nil)
	waitFor(t, func() bool { return lastMTU() == 1420 })
}
