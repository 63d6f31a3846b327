package mesh

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DiffOptions carries what Diff needs beyond the desired and actual state.
type DiffOptions struct {
	// LastApplied is the endpoint this agent last wrote for each peer. A
	// device endpoint that differs from it was learned by WireGuard from
	// an authenticated handshake (roaming) and is kept, unless the
	// published endpoint itself changed since.
	LastApplied map[wgtypes.Key]netip.AddrPort
	// GC allows removing device peers that are not desired. Set it only
	// once the node source has synced: before that, a missing node may
	// just not be listed yet.
	GC bool
	// KnownKeys maps a node name to the key its peer had on the device
	// (see Input.KnownKeys). When a node's key changed (rotation), its
	// new peer starts from the old peer's roamed endpoint: the address
	// WireGuard last authenticated it at, e.g. behind a NAT, is a better
	// bet than a published one it had already roamed away from.
	KnownKeys map[string]wgtypes.Key
}

// Diff returns the per-peer changes that take dev to desired. It never
// sets ReplacePeers (that would drop sessions and roamed endpoints) and
// only mentions peers that need a change, so a converged device yields a
// Config with no peers; see IsEmpty.
func Diff(desired Desired, dev *wgtypes.Device, opts DiffOptions) wgtypes.Config {
	var cfg wgtypes.Config
	have := map[wgtypes.Key]*wgtypes.Peer{}
	if dev != nil {
		for i := range dev.Peers {
			have[dev.Peers[i].PublicKey] = &dev.Peers[i]
		}
	}
	want := map[wgtypes.Key]bool{}

	for _, p := range desired.Peers {
		want[p.PublicKey] = true
		cur, ok := have[p.PublicKey]
		if !ok {
			pc := wgtypes.PeerConfig{
				PublicKey:                   p.PublicKey,
				PersistentKeepaliveInterval: durationPtr(p.Keepalive),
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  ipNetsFromPrefixes(p.AllowedIPs),
			}
			ep := p.Endpoint
			prev, known := opts.KnownKeys[p.Node]
			rekeyed := known && prev != p.PublicKey
			if rekeyed {
				if old, ok := have[prev]; ok {
					if roamed, ok := roamedEndpoint(p.Endpoint, old, opts.LastApplied[prev]); ok {
						ep = roamed
					}
				}
			}
			if ep.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(ep)
			}
			if !rekeyed || p.Keepalive != 0 {
				// A keepalive turned on for a new peer makes
				// WireGuard send one at once: with a keepalive a
				// rotated peer is greeted immediately anyway.
				cfg.Peers = append(cfg.Peers, pc)
				continue
			}
			// The node rotated its key and this peer has no keepalive.
			// The rotating node's own handshakes with its new key were
			// dropped until now and WireGuard retries them only every
			// 5 s (RekeyTimeout): a one-way flow from it would stall
			// that long. So greet it from here: create the peer with a
			// keepalive, which sends one (and a handshake) at once,
			// then turn the keepalive off again in the same write.
			pc.PersistentKeepaliveInterval = durationPtr(rotationGreeting)
			cfg.Peers = append(cfg.Peers, pc, wgtypes.PeerConfig{
				PublicKey: p.PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: durationPtr(0),
			})
			continue
		}

		pc := wgtypes.PeerConfig{PublicKey: p.PublicKey, UpdateOnly: true}
		changed := false
		if p.Endpoint.IsValid() && endpointNeedsWrite(p, cur, opts.LastApplied) {
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
			changed = true
		}
		if cur.PersistentKeepaliveInterval != p.Keepalive {
			pc.PersistentKeepaliveInterval = durationPtr(p.Keepalive)
			changed = true
		}
		if !slices.Equal(sortedCopy(prefixesFromIPNets(cur.AllowedIPs)), sortedCopy(p.AllowedIPs)) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = ipNetsFromPrefixes(p.AllowedIPs)
			changed = true
		}
		if changed {
			cfg.Peers = append(cfg.Peers, pc)
		}
	}

	if opts.GC && dev != nil {
		var gone []wgtypes.Key
		for _, p := range dev.Peers {
			if !want[p.PublicKey] {
				gone = append(gone, p.PublicKey)
			}
		}
		slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
		for _, k := range gone {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	return cfg
}

// InitiateHandshakes returns a configuration that makes WireGuard send a
// handshake initiation to every peer of dev at once and changes nothing
// else: each peer's persistent keepalive is switched off and back on
// (wireguard-go sends a keepalive, hence an initiation when there is no
// current session, when a peer's keepalive goes from off to on), or on and
// off again for a peer without one.
func InitiateHandshakes(dev *wgtypes.Device) wgtypes.Config {
	var cfg wgtypes.Config
	if dev == nil {
		return cfg
	}
	for _, p := range dev.Peers {
		cfg.Peers = append(cfg.Peers, initiation(p.PublicKey, p.PersistentKeepaliveInterval)...)
	}
	return cfg
}

// initiation is the pair of peer changes that makes WireGuard send a
// handshake initiation to one peer and leaves its keepalive as it was.
func initiation(key wgtypes.Key, keepalive time.Duration) []wgtypes.PeerConfig {
	first, then := durationPtr(0), durationPtr(keepalive)
	if keepalive == 0 {
		first, then = durationPtr(rotationGreeting), durationPtr(0)
	}
	return []wgtypes.PeerConfig{
		{PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: first},
		{PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: then},
	}
}

// rotationGreeting is the keepalive briefly set on the new peer of a node
// that rotated its key; any non-zero value triggers the greeting.
const rotationGreeting = 25 * time.Second

// endpointNeedsWrite decides whether the published endpoint must be written
// over what the device has.
func endpointNeedsWrite(p Peer, cur *wgtypes.Peer, last map[wgtypes.Key]netip.AddrPort) bool {
	devEP, ok := addrPortOf(cur.Endpoint)
	if ok && devEP == p.Endpoint {
		return false
	}
	if !ok {
		return true // the device has none: nothing to preserve
	}
	prev, known := last[p.PublicKey]
	// We wrote exactly this endpoint before and the device now has another:
	// WireGuard roamed. Keep the roamed one. If we never wrote one (e.g.
	// after an agent restart) or the published endpoint moved, the
	// published one is the better bet.
	return !known || prev != p.Endpoint
}

// roamedEndpoint returns the device peer's endpoint if WireGuard roamed it
// away from published, the endpoint we last wrote (lastWritten) and that
// is still published.
func roamedEndpoint(published netip.AddrPort, cur *wgtypes.Peer, lastWritten netip.AddrPort) (netip.AddrPort, bool) {
	devEP, ok := addrPortOf(cur.Endpoint)
	if !ok || !published.IsValid() || devEP == published || lastWritten != published {
		return netip.AddrPort{}, false
	}
	return devEP, true
}

// IsEmpty reports whether cfg would change nothing, so the caller can skip
// the device write entirely.
func IsEmpty(cfg wgtypes.Config) bool {
	return cfg.PrivateKey == nil && cfg.ListenPort == nil && cfg.FirewallMark == nil &&
		!cfg.ReplacePeers && len(cfg.Peers) == 0
}

func addrPortOf(u *net.UDPAddr) (netip.AddrPort, bool) {
	if u == nil {
		return netip.AddrPort{}, false
	}
	ap := u.AddrPort()
	if !ap.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

func durationPtr(d time.Duration) *time.Duration { return &d }

func sortedCopy(p []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(p))
	for _, q := range p {
		out = append(out, q.Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
