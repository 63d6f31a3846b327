package wgdev

import (
	"bytes"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// One initiator per fresh pair.
//
// When two agents add each other at the same moment, both devices used to
// send an initiation. Crossed initiations are not just wasted: a device
// that receives the peer's initiation and the answer to its own at the
// same moment hands them to two of wireguard-go's handshake workers, and
// those race on the peer's handshake state (ConsumeMessageResponse checks
// the state under a read lock and writes it later under a write lock;
// CreateMessageResponse replaces the local index in between). One
// interleaving completes the session with the answer while the other
// worker has already dropped the index the peer now sends to: the peer
// confirms the session (it received our keepalive), every packet it sends
// us is dropped as addressed to an unknown index, and both sides show a
// completed handshake, so nothing repairs it until WireGuard's
// new-handshake timer after 15 s without an answer. Captured in a fresh
// lab under load (docs/reliability.md, "the root cause"); in memory, 1-2
// of 150 crossings broke that way on a loaded 2-core machine, some with no
// log line at all.
//
// So of a fresh pair only the smaller key initiates (greets at once and
// repairs, greet.go). The larger key's device must not initiate for a
// while, neither by a greeting nor by a persistent keepalive or pod
// packets: when it adds the peer, its first initiation is created while
// the bind holds back initiations to the peer's endpoint. wireguard-go
// then holds back its next initiation for RekeyTimeout (5 s) and queues
// packets until the other side's handshake arrives, which it answers. If
// none has arrived after answerWait (the other side cannot reach us, is
// behind a NAT, or has not added us yet), this side initiates after all.

// holdBind drops handshake initiations to the endpoints it holds, so that
// a device can start WireGuard's initiation hold-off for a peer without
// the initiation reaching it. Everything else passes. Like boundedBind it
// costs wireguard-go's route listener (see there), now also with
// MaxInflight < 0.
type holdBind struct {
	conn.Bind

	mu   sync.Mutex
	held map[netip.AddrPort]int // a count: writes may overlap
	// dropped counts the initiations held back (tests).
	dropped int
}

func newHoldBind(b conn.Bind) *holdBind {
	return &holdBind{Bind: b, held: map[netip.AddrPort]int{}}
}

func (b *holdBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	// wireguard-go sends an initiation alone, as one buffer; data
	// batches fail the first check at once.
	if len(bufs) == 1 && len(bufs[0]) == device.MessageInitiationSize &&
		bufs[0][0] == device.MessageInitiationType && b.holds(ep) {
		return nil
	}
	return b.Bind.Send(bufs, ep)
}

func (b *holdBind) holds(ep conn.Endpoint) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.held) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(ep.DstToString())
	if err != nil {
		return false
	}
	if b.held[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] > 0 {
		b.dropped++
		return true
	}
	return false
}

// hold holds back initiations to eps until the returned func is called.
func (b *holdBind) hold(eps []netip.AddrPort) (release func()) {
	if len(eps) == 0 {
		return func() {}
	}
	b.mu.Lock()
	for _, ep := range eps {
		b.held[ep]++
	}
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, ep := range eps {
			if b.held[ep]--; b.held[ep] <= 0 {
				delete(b.held, ep)
			}
		}
	}
}

// initiates reports whether self initiates the first handshake with peer:
// the smaller public key does.
func initiates(self, peer wgtypes.Key) bool {
	return bytes.Compare(self[:], peer[:]) < 0
}

// quietAdds returns the peers of cfg that the write adds to dev (not there
// yet) with an endpoint and that self does not initiate to, and their
// endpoints. Peers in loud (coming back, see rejoin.go) are left out.
func quietAdds(dev *device.Device, self wgtypes.Key, cfg wgtypes.Config, loud map[wgtypes.Key]bool) ([]wgtypes.Key, []netip.AddrPort) {
	var keys []wgtypes.Key
	var eps []netip.AddrPort
	for _, p := range cfg.Peers {
		if p.Remove || p.UpdateOnly || p.Endpoint == nil || initiates(self, p.PublicKey) || loud[p.PublicKey] {
			continue
		}
		ap := p.Endpoint.AddrPort()
		if !ap.IsValid() || dev.LookupPeer(device.NoisePublicKey(p.PublicKey)) != nil {
			continue
		}
		keys = append(keys, p.PublicKey)
		eps = append(eps, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return keys, eps
}

// quietly applies cfg with the device's bind holding back initiations to
// the new peers that the other side initiates to (quietAdds, except those
// in loud), and starts WireGuard's initiation hold-off for each of them:
// an initiation created and held back. A keepalive or a packet in the same write hits the hold
// too, and starts the same hold-off.
func quietly(dev *device.Device, hb *holdBind, self wgtypes.Key, cfg wgtypes.Config, loud map[wgtypes.Key]bool, apply func() error) error {
	keys, eps := quietAdds(dev, self, cfg, loud)
	release := hb.hold(eps)
	defer release()
	err := apply()
	for _, k := range keys {
		// A peer the write did not get to (it failed part-way) is
		// not there.
		if peer := dev.LookupPeer(device.NoisePublicKey(k)); peer != nil {
			_ = peer.SendHandshakeInitiation(false)
		}
	}
	return err
}
