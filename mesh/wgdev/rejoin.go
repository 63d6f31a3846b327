package wgdev

import (
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peers that come back.
//
// A peer removed and added again soon after (its Node deleted and
// re-created while its agent kept running: `kubectl delete node` and the
// kubelet registering again, a cloud node controller's delete) is a fresh
// pair on our side only. The other agent never removed us: it holds a
// session with us, has no reason to initiate, and what it sends on that
// session reaches a device that no longer has it. Under the one-initiator
// rule (quiet.go) the larger key then added the peer quietly and waited
// answerWait for an initiation that never came: in the convergence bench's
// re-join every such pair took 1 s (docs/benchmarks.md, round 10).
//
// So a peer added again within rejoinWindow of its removal is not added
// quietly and is greeted at once, whichever key is smaller. That cannot
// cross an initiation of the other side, which did not add us. Only if
// both sides removed and re-added each other within the window (both Nodes
// re-created) may both initiate; a crossing then costs a repair, and rarely
// the 15 s of quiet.go's race.

// rejoinWindow is how long after we removed a peer it may still hold a
// session with us: wireguard-go uses a session for RejectAfterTime at most.
const rejoinWindow = device.RejectAfterTime

// removals remembers when peers were removed, for rejoinWindow.
type removals struct {
	mu sync.Mutex
	at map[wgtypes.Key]time.Time
}

// note records that the peers of cfg marked Remove were removed at now,
// and forgets removals older than rejoinWindow, so that the map holds at
// most the peers removed in the last window.
func (r *removals) note(cfg wgtypes.Config, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, t := range r.at {
		if now.Sub(t) > rejoinWindow {
			delete(r.at, k)
		}
	}
	for _, p := range cfg.Peers {
		if !p.Remove {
			continue
		}
		if r.at == nil {
			r.at = map[wgtypes.Key]time.Time{}
		}
		r.at[p.PublicKey] = now
	}
}

// returning returns the peers cfg adds to dev (not there yet, with an
// endpoint) that were removed within rejoinWindow before now. A nil dev
// (the unit test's) has no peers.
func (r *removals) returning(dev *device.Device, cfg wgtypes.Config, now time.Time) map[wgtypes.Key]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.at) == 0 {
		return nil
	}
	var back map[wgtypes.Key]bool
	for _, p := range cfg.Peers {
		if p.Remove || p.UpdateOnly || p.Endpoint == nil {
			continue
		}
		t, ok := r.at[p.PublicKey]
		if !ok || now.Sub(t) > rejoinWindow {
			continue
		}
		if dev != nil && dev.LookupPeer(device.NoisePublicKey(p.PublicKey)) != nil {
			continue
		}
		if back == nil {
			back = map[wgtypes.Key]bool{}
		}
		back[p.PublicKey] = true
	}
	return back
}

// forget drops the removal records of keys (peers that are back).
func (r *removals) forget(keys map[wgtypes.Key]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range keys {
		delete(r.at, k)
	}
}

// greetReturning greets those of back that the write added, whichever key
// is smaller, and forgets their removals.
func (d *Device) greetReturning(back map[wgtypes.Key]bool) {
	if len(back) == 0 {
		return
	}
	added := map[wgtypes.Key]bool{}
	var keys []wgtypes.Key
	for k := range back {
		if d.dev.LookupPeer(device.NoisePublicKey(k)) != nil {
			added[k] = true
			keys = append(keys, k)
		}
	}
	d.removed.forget(added)
	d.mu.Lock()
	g := d.greeter
	d.mu.Unlock()
	if g == nil || len(keys) == 0 {
		return
	}
	d.log.Info("peers added again soon after their removal; greeting them whichever key is smaller (they may still hold a session with us)",
		"peers", len(keys), "window", rejoinWindow)
	g.greetAll(keys...)
}
