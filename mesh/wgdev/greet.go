package wgdev

import (
	"bytes"
	"log/slog"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Greeting new peers, and repairing crossed first handshakes.
//
// wireguard-go starts a handshake only when a packet for the peer is
// waiting (or a keepalive is due). In a mesh that comes up at once, the
// first packets of both directions of a pair often leave within
// milliseconds of each other; so do two greetings from agents that added
// each other at the same moment. Two initiations that cross are each
// answered, and each answer is then dropped by the side that receives it:
// answering the other's initiation replaced its own handshake state
// ("Received invalid response message" in the device log). Neither side
// has a session, and WireGuard allows the next initiation only after
// RekeyTimeout (5 s, plus up to 1/3 s jitter); under load the retries can
// cross again. Captured in fresh labs on a loaded 2-core box; see
// docs/reliability.md.
//
// So the device greets every peer it is given (Greet) with a handshake
// initiation at once, so that a session exists before pod traffic needs
// one, and watches it until a handshake completes. Of a pair, only the
// side with the smaller public key repairs: if no handshake completed
// after repairFirst, it forgets the half-done handshake (which also lifts
// the 5 s rate limit) and initiates again, backing off to repairMax. The
// other side cannot cross that initiation: it sent its own less than 5 s
// ago, so WireGuard holds its next one back. A greeting that arrives
// before the other agent has added us is dropped there; that agent greets
// us when it adds us, and this side's repairs cover the rest.
const (
	// repairFirst is how long a crossed handshake may stand before the
	// smaller key initiates again. A handshake is one round trip (well
	// under 10 ms here even under load); 500 ms leaves room for a very
	// loaded node without repairing handshakes that are merely slow (and
	// repairing one of those costs only another round trip).
	repairFirst = 500 * time.Millisecond
	// repairMax caps the backoff between repairs while the other side
	// does not answer at all (not up yet, or gone): at most one
	// initiation (148 bytes) per 2 s per such peer.
	repairMax = 2 * time.Second
	// watchFor is how long a peer is watched; afterwards WireGuard's own
	// retries (every 5 s while packets wait) are all there is, as for any
	// peer. It covers an agent that starts a minute or two after the
	// Node of its peer appeared.
	watchFor = 2 * time.Minute
)

// greeter greets and watches peers of one wireguard-go device.
type greeter struct {
	dev *device.Device
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	watched map[wgtypes.Key]*watch
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

type watch struct {
	since   time.Time
	next    time.Time
	backoff time.Duration
	repairs int
}

func newGreeter(dev *device.Device, log *slog.Logger) *greeter {
	g := &greeter{
		dev: dev, log: log, now: time.Now,
		watched: map[wgtypes.Key]*watch{},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go g.run()
	return g
}

// greet sends a handshake initiation to each peer now and watches it.
// Peers the device does not have are ignored.
func (g *greeter) greet(keys ...wgtypes.Key) {
	now := g.now()
	g.mu.Lock()
	for _, k := range keys {
		peer := g.dev.LookupPeer(device.NoisePublicKey(k))
		if peer == nil {
			continue
		}
		// A peer new to the device sends at once; one that already
		// initiated within 5 s makes this a no-op.
		if err := peer.SendHandshakeInitiation(false); err != nil {
			g.log.Debug("greeting a peer failed", "peer", k.String(), "err", err)
		}
		g.watched[k] = &watch{since: now, next: now.Add(repairFirst), backoff: repairFirst}
	}
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// greetSilent greets those of keys that have no session yet (an endpoint
// written later to a peer that was added without one): a peer with a
// session needs no greeting, and its watch would end at the first check.
func (g *greeter) greetSilent(keys ...wgtypes.Key) {
	_, peers, err := g.read()
	if err != nil {
		g.log.Debug("reading the device before greeting failed; greeting anyway", "err", err)
		g.greet(keys...)
		return
	}
	var silent []wgtypes.Key
	for _, k := range keys {
		if st, ok := peers[k]; ok && !st.handshake {
			silent = append(silent, k)
		}
	}
	if len(silent) > 0 {
		g.greet(silent...)
	}
}

func (g *greeter) close() {
	close(g.stop)
	<-g.done
}

func (g *greeter) run() {
	defer close(g.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Reset(g.check())
		select {
		case <-g.stop:
			return
		case <-g.wake:
		case <-timer.C:
		}
	}
}

// check acts on every watch that is due and returns how long to sleep.
func (g *greeter) check() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	due := false
	sleep := time.Hour
	for _, w := range g.watched {
		if !w.next.After(now) {
			due = true
		} else {
			sleep = min(sleep, w.next.Sub(now))
		}
	}
	if !due {
		return sleep
	}
	self, peers, err := g.read()
	if err != nil {
		g.log.Debug("reading the device for the handshake watch failed", "err", err)
		return repairFirst
	}
	sleep = time.Hour
	for k, w := range g.watched {
		if w.next.After(now) {
			sleep = min(sleep, w.next.Sub(now))
			continue
		}
		st, ok := peers[k]
		switch {
		case !ok || st.handshake:
			// Removed, or a session exists: nothing to watch.
			delete(g.watched, k)
			continue
		case now.Sub(w.since) > watchFor:
			g.log.Info("no handshake with peer yet; leaving it to WireGuard's own retries",
				"peer", k.String(), "watched", watchFor, "repairs", w.repairs)
			delete(g.watched, k)
			continue
		case st.endpoint && bytes.Compare(self[:], k[:]) < 0:
			if peer := g.dev.LookupPeer(device.NoisePublicKey(k)); peer != nil {
				// Drops the half-done handshake (useless after a
				// crossing) and the 5 s rate limit with it.
				peer.ExpireCurrentKeypairs()
				if err := peer.SendHandshakeInitiation(false); err != nil {
					g.log.Debug("handshake repair failed", "peer", k.String(), "err", err)
				}
				w.repairs++
				g.log.Debug("no handshake with peer yet; initiating again", "peer", k.String(),
					"since", now.Sub(w.since).Round(time.Millisecond), "repairs", w.repairs)
			}
		}
		w.next = now.Add(w.backoff)
		w.backoff = min(2*w.backoff, repairMax)
		sleep = min(sleep, w.next.Sub(now))
	}
	return sleep
}

type peerState struct{ endpoint, handshake bool }

// read returns our public key and, per peer, whether it has an endpoint
// and a completed handshake, from the device's UAPI "get" (parsed as the
// in-process device reader does, see parseGet).
func (g *greeter) read() (wgtypes.Key, map[wgtypes.Key]peerState, error) {
	var buf bytes.Buffer
	if err := g.dev.IpcGetOperation(&buf); err != nil {
		return wgtypes.Key{}, nil, err
	}
	d, err := parseGet(buf.Bytes())
	if err != nil {
		return wgtypes.Key{}, nil, err
	}
	return d.PublicKey, peerStates(d), nil
}

// peerStates extracts what the watch needs from a device.
func peerStates(d *wgtypes.Device) map[wgtypes.Key]peerState {
	peers := make(map[wgtypes.Key]peerState, len(d.Peers))
	for _, p := range d.Peers {
		peers[p.PublicKey] = peerState{endpoint: p.Endpoint != nil, handshake: !p.LastHandshakeTime.IsZero()}
	}
	return peers
}
