package wgdev

import (
	"bytes"
	"cmp"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Greeting new peers, and repairing first handshakes that went nowhere.
//
// wireguard-go starts a handshake only when a packet for the peer is
// waiting (or a keepalive is due). So the device greets every peer it is
// given (Greet), so that a session exists before pod traffic needs one,
// and watches it until a handshake completes.
//
// Of a pair only one side greets: the smaller public key (quiet.go tells
// why two initiations that cross are worse than none). Its greeting is
// dropped if the other agent has not added us yet; it therefore
// initiates again every repairEvery while no handshake completed, for
// repairFast, then backing off to repairMax. A repair forgets the
// half-done handshake (which also lifts WireGuard's 5 s rate limit). The
// larger key waits for that initiation and answers it; only if no
// handshake completed after answerWait (the other side cannot reach our
// endpoint, e.g. behind a NAT or on another address family, or has not
// added us yet) does it initiate itself, backing off the same way. By
// then the smaller key has had answerWait/repairEvery chances, so the two
// rarely initiate at once.
//
// Crossed initiations are still possible (pod traffic on both sides of a
// pair that is not quiet, a NAT'd pair, a late agent); they cost no more
// than the next repair unless they trip the race in quiet.go.
const (
	// repairEvery is how often the smaller key initiates again while
	// no handshake completed, for the first repairFast. A handshake is
	// one round trip (well under 10 ms here even under load); 250 ms
	// leaves room for a very loaded node without repairing handshakes
	// that are merely slow, and keeps a pair whose first greeting was
	// dropped (the other agent added us a moment later) within 250 ms
	// of a session.
	repairEvery = 250 * time.Millisecond
	// repairFast is how long repairs stay at repairEvery; then they back
	// off, doubling, to repairMax.
	repairFast = 3 * time.Second
	// repairMax caps the backoff while the other side does not answer
	// at all (not up yet, or gone): at most one initiation (148 bytes)
	// per 2 s per such peer.
	repairMax = 2 * time.Second
	// answerWait is how long the larger key waits for the smaller key's
	// initiation before it initiates itself: four of the smaller key's
	// repairs, and far below WireGuard's own 5 s retry.
	answerWait = time.Second
	// watchFor is how long a peer is watched; afterwards WireGuard's own
	// retries (every 5 s while packets wait) are all there is, as for any
	// peer. It covers an agent that starts a minute or two after the
	// Node of its peer appeared.
	watchFor = 2 * time.Minute

	// repairRate and repairBurst bound the repairs of all watches
	// together. A repair is a handshake initiation: three X25519
	// operations, ~150 µs here. Unbounded, 5000 peers that do not
	// answer (a large mesh whose other agents are not up yet) cost
	// 2500 initiations a second at repairMax, and at 5000 Nodes the
	// watch took half the agent's CPU (integration/bench scale role,
	// docs/benchmarks.md); 200 a second is ~3% of a core. Watches with
	// the fewest repairs go first, so a fresh pair keeps its 250 ms
	// repairs however many long-silent peers wait beside it.
	repairRate  = 200
	repairBurst = 200
	// readDuty bounds the device reads: after a read that took d, the
	// next waits until readDuty×d has passed (≤ 5% of a CPU). At a
	// handful of peers a read takes microseconds and this changes
	// nothing; at 5000 it takes 15-20 ms and the watch, whose watches
	// fall due one after another, read the device back to back.
	readDuty = 20
)

// greeter greets and watches peers of one wireguard-go device.
type greeter struct {
	dev *device.Device
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	self    wgtypes.Key
	watched map[wgtypes.Key]*watch
	// silent are peers to greet if they have no session (greetSilent),
	// decided at the next check.
	silent  map[wgtypes.Key]struct{}
	repairs *rate.Limiter // repairRate; tests set it
	// lastRead and readCost are the wall clock start and duration of
	// the last device read (readDuty).
	lastRead time.Time
	readCost time.Duration
	wake     chan struct{}
	stop     chan struct{}
	done     chan struct{}
}

type watch struct {
	since   time.Time
	next    time.Time
	backoff time.Duration
	repairs int
}

func newGreeter(dev *device.Device, log *slog.Logger, self wgtypes.Key) *greeter {
	g := &greeter{
		dev: dev, log: log, now: time.Now, self: self,
		watched: map[wgtypes.Key]*watch{},
		silent:  map[wgtypes.Key]struct{}{},
		repairs: rate.NewLimiter(repairRate, repairBurst),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go g.run()
	return g
}

func (g *greeter) setSelf(k wgtypes.Key) {
	g.mu.Lock()
	g.self = k
	g.mu.Unlock()
}

// greet starts the first handshake with each of keys as its side of the
// pair does (see above) and watches it. Peers the device does not have
// are ignored.
func (g *greeter) greet(keys ...wgtypes.Key) { g.greetAs(false, keys) }

// greetAll greets each of keys with an initiation now, whichever key is
// smaller: for peers that have no reason to initiate themselves (they
// hold a session with our previous incarnation).
func (g *greeter) greetAll(keys ...wgtypes.Key) { g.greetAs(true, keys) }

func (g *greeter) greetAs(all bool, keys []wgtypes.Key) {
	g.mu.Lock()
	g.greetLocked(all, keys, g.now())
	g.mu.Unlock()
	g.poke()
}

// greetLocked is greetAs with g.mu held.
func (g *greeter) greetLocked(all bool, keys []wgtypes.Key, now time.Time) {
	for _, k := range keys {
		peer := g.dev.LookupPeer(device.NoisePublicKey(k))
		if peer == nil {
			continue
		}
		initiator := initiates(g.self, k)
		if initiator || all {
			// A peer new to the device sends at once; one that
			// already initiated within 5 s makes this a no-op.
			if err := peer.SendHandshakeInitiation(false); err != nil {
				g.log.Debug("greeting a peer failed", "peer", k.String(), "err", err)
			}
		}
		if initiator {
			g.watched[k] = &watch{since: now, next: now.Add(repairEvery), backoff: repairEvery}
		} else {
			// The other side greets and repairs; we answer, or
			// initiate after answerWait.
			g.watched[k] = &watch{since: now, next: now.Add(answerWait), backoff: repairMax}
		}
	}
}

// poke has the watch run a check now.
func (g *greeter) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// greetSilent greets those of keys that have no session yet (an endpoint
// written later to a peer that was added without one): a peer with a
// session needs no greeting, and its watch would end at the first check.
// Which ones have a session is known only from a device read, which at
// 5000 peers takes 15-20 ms: the watch's goroutine decides at its next
// check, so the reconcile pass that wrote the endpoint does not wait for it.
func (g *greeter) greetSilent(keys ...wgtypes.Key) {
	g.mu.Lock()
	for _, k := range keys {
		g.silent[k] = struct{}{}
	}
	g.mu.Unlock()
	g.poke()
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
	due := len(g.silent) > 0
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
	if wait := readDuty*g.readCost - time.Since(g.lastRead); wait > 0 {
		return wait
	}
	g.lastRead = time.Now()
	self, peers, err := g.read()
	g.readCost = time.Since(g.lastRead)
	if err != nil {
		g.log.Debug("reading the device for the handshake watch failed", "err", err)
		return repairEvery
	}
	if len(g.silent) > 0 {
		var greet []wgtypes.Key
		for k := range g.silent {
			if st, ok := peers[k]; ok && !st.handshake {
				greet = append(greet, k)
			}
		}
		clear(g.silent)
		// The new watches are due later: the loop below skips them.
		g.greetLocked(false, greet, now)
	}
	type dueWatch struct {
		key wgtypes.Key
		*watch
	}
	var repair []dueWatch
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
		case st.endpoint:
			repair = append(repair, dueWatch{k, w})
			continue
		}
		w.schedule(now)
		sleep = min(sleep, w.next.Sub(now))
	}
	// Fewest repairs first (a fresh pair before long-silent peers), then
	// the longest overdue.
	slices.SortFunc(repair, func(a, b dueWatch) int {
		return cmp.Or(cmp.Compare(a.repairs, b.repairs), a.next.Compare(b.next))
	})
	deferred := 0
	for _, d := range repair {
		if !g.repairs.AllowN(now, 1) {
			// Over the budget: due again at the next check, not
			// counted as a repair and not backed off.
			d.next = now.Add(repairEvery)
			deferred++
			sleep = min(sleep, repairEvery)
			continue
		}
		if peer := g.dev.LookupPeer(device.NoisePublicKey(d.key)); peer != nil {
			// Drops the half-done handshake (useless after a
			// crossing or a dropped greeting) and the 5 s rate
			// limit with it.
			peer.ExpireCurrentKeypairs()
			if err := peer.SendHandshakeInitiation(false); err != nil {
				g.log.Debug("handshake repair failed", "peer", d.key.String(), "err", err)
			}
			d.repairs++
			g.log.Debug("no handshake with peer yet; initiating again", "peer", d.key.String(),
				"since", now.Sub(d.since).Round(time.Millisecond), "repairs", d.repairs,
				"initiator", initiates(self, d.key))
		}
		d.schedule(now)
		sleep = min(sleep, d.next.Sub(now))
	}
	if deferred > 0 {
		g.log.Debug("handshake repairs over the rate limit; deferred", "deferred", deferred, "limit", repairRate)
	}
	return sleep
}

// schedule sets the watch's next check after one at now.
func (w *watch) schedule(now time.Time) {
	w.next = now.Add(w.backoff)
	if now.Sub(w.since) >= repairFast {
		w.backoff = min(2*w.backoff, repairMax)
	}
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
