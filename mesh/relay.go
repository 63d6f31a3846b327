package mesh

import (
	"cmp"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Relays: two nodes without a working path to each other (both behind NAT
// with no reachable endpoint, or a firewall between them) reach each other
// through a relay node that both reach. Each side moves the far node's pod
// CIDRs from the far node's peer to the relay's peer; the relay, which
// holds both as ordinary peers, forwards between them. Both sides decide
// alike from what both see: no handshake on the direct path within
// RelayAfter of wanting it, or, on a path that worked, no handshake for
// staleBound (handshakes complete on both ends, so both see the same
// times); and the relay is chosen from the same candidates by the same
// hash. The direct peer stays on the device, without allowed IPs, and is
// sent a handshake every RelayRetry; once one completes, the pair goes
// direct again.
const (
	// AnnotationRelay marks a node as a relay candidate ("true"): it must
	// be reachable by every node (a public endpoint). "false" keeps a node
	// out of the automatic choice (see RelayCandidates).
	AnnotationRelay = AnnotationPrefix + "relay"
	// DefaultRelayAfter is how long a direct path may go without a
	// handshake before the pair is relayed: the greeting at peer creation
	// and WireGuard's retries every 5 s give three chances.
	DefaultRelayAfter = 15 * time.Second
	// DefaultRelayRetry is how often a relayed pair's direct path is tried.
	DefaultRelayRetry = time.Minute
	// DefaultRelayStale is the base of staleBound. WireGuard renews a
	// session that carries any packet (a persistent keepalive is one):
	// the keypair's initiator starts a new handshake on sending after
	// 120 s or on receiving after 165 s, and a responder whose keypair
	// expires at 180 s starts one on its next send. So a working pair
	// with a persistent keepalive K has a handshake at least every
	// 165 s + K (+5 s per lost message); 180 s + 2K leaves 15 s + K.
	DefaultRelayStale = 180 * time.Second
	// DefaultRelayWatch is how often the reconciler reads the device
	// between passes while relaying is on, to act on a handshake of a
	// relayed pair or a direct path going stale within that long (both
	// ends of a pair do, so they disagree for at most about that long).
	DefaultRelayWatch = time.Second
)

// staleBound is how long a direct path that worked may go without a
// handshake before it counts as broken; zero (never) without a persistent
// keepalive: an idle pair then renews nothing, and its old handshake says
// nothing about the path.
func staleBound(base, keepalive time.Duration) time.Duration {
	if keepalive <= 0 {
		return 0
	}
	return base + 2*keepalive
}

// RelayCandidates returns the relay candidates, sorted, from the parsed
// list: the nodes marked AnnotationRelay=true if there are any; otherwise,
// automatically, every node whose endpoint is a public address (see
// publicAddr) and that is not marked AnnotationRelay=false. Our own Node
// counts when it parses as a peer, as it does on the other nodes, so every
// node computes the same candidates.
func RelayCandidates(list NodeList) []string {
	nodes := list.Nodes
	if list.Own != nil && list.Own.Peer != nil {
		nodes = append(slices.Clip(nodes), *list.Own.Peer)
	}
	var marked, auto []string
	for _, n := range nodes {
		switch {
		case n.Relay:
			marked = append(marked, n.Name)
		case !n.NoRelay && publicEndpoint(n.Endpoint):
			auto = append(auto, n.Name)
		}
	}
	out := marked
	if len(out) == 0 {
		out = auto
	}
	slices.Sort(out)
	return out
}

func relayMark(raw RawNode) (relay, noRelay bool) {
	v := strings.TrimSpace(raw.Annotations[AnnotationRelay])
	return strings.EqualFold(v, "true"), strings.EqualFold(v, "false")
}

// cgnat is the shared address space of carrier-grade NAT (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// publicEndpoint reports whether an endpoint is an IP literal that other
// networks can route to: global unicast, not private (RFC 1918, ULA) and
// not CGNAT. Names do not count (they would have to be resolved alike on
// every node). A node behind NAT that publishes its inside address is
// thus never chosen; one whose published address is a NAT's public one
// (an endpoint override) is, and must forward: mark relays explicitly
// where that is wrong.
func publicEndpoint(ep Endpoint) bool {
	a, err := netip.ParseAddr(ep.Host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsGlobalUnicast() && !a.IsPrivate() && !cgnat.Contains(a)
}

// ChooseRelay picks the relay for the pair (a, b) among the candidates:
// the same answer on both ends, whatever the order of a and b, spread over
// the candidates by rendezvous hashing. "" if no candidate is neither.
func ChooseRelay(a, b string, candidates []string) string {
	if a > b {
		a, b = b, a
	}
	best, bestScore := "", uint64(0)
	for _, c := range candidates {
		if c == a || c == b {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(a + "\x00" + b + "\x00" + c))
		if s := h.Sum64(); best == "" || s > bestScore || (s == bestScore && c < best) {
			best, bestScore = c, s
		}
	}
	return best
}

// pathState is what the reconciler remembers about the direct path to one
// node.
type pathState struct {
	key wgtypes.Key
	// wanted is when the peer with this key was first desired.
	wanted time.Time
	// relayed is when the pair went through a relay (zero: direct);
	// probed when the direct path was last tried.
	relayed, probed time.Time
	// stale is staleBound for this peer; stuck is the handshake time at
	// which the path was found broken with no relay to go through (so
	// the watch does not ask for a pass again until it changes).
	stale time.Duration
	stuck time.Time
}

// RelayInput is what the relay decision reads.
type RelayInput struct {
	Self       string
	Now        time.Time
	Candidates []string
	// Handshakes is the device's last handshake per peer key (zero:
	// none).
	Handshakes map[wgtypes.Key]time.Time
	After      time.Duration
	Retry      time.Duration
	// Stale is the base of staleBound (DefaultRelayStale).
	Stale time.Duration
}

// relayPlan is the outcome of one decision: the relayed pairs (far node →
// relay) and the far nodes whose direct path is to be tried now.
type relayPlan struct {
	via   map[string]string
	probe []string
	// next is when the decision may change without any input changing
	// (a bound or a retry falls due); zero if never.
	next time.Time
}

// planRelays updates the path states of the desired node peers (external
// peers are never relayed) and decides which pairs go through a relay.
func planRelays(in RelayInput, peers []Peer, paths map[string]*pathState) relayPlan {
	plan := relayPlan{via: map[string]string{}}
	desired := map[string]bool{}
	due := func(t time.Time) {
		if plan.next.IsZero() || t.Before(plan.next) {
			plan.next = t
		}
	}
	for _, p := range peers {
		if isExternalPeerNode(p.Node) {
			continue
		}
		desired[p.Node] = true
		ps := paths[p.Node]
		if ps == nil || ps.key != p.PublicKey {
			ps = &pathState{key: p.PublicKey, wanted: in.Now}
			paths[p.Node] = ps
		}
		ps.stale = staleBound(in.Stale, p.Keepalive)
		hs := in.Handshakes[p.PublicKey]
		if !ps.relayed.IsZero() {
			if ps.directAgain(hs) {
				// A handshake on the direct path since we relayed or
				// last tried: it works (again).
				ps.relayed, ps.probed, ps.wanted = time.Time{}, time.Time{}, in.Now
				continue
			}
		} else {
			switch {
			case hs.IsZero() && in.Now.Sub(ps.wanted) < in.After:
				// Young: WireGuard is still trying.
				due(ps.wanted.Add(in.After))
				continue
			case !hs.IsZero() && !ps.wentStale(in.Now, hs):
				// It worked and is not stale (the watch notices when
				// it goes stale; see due).
				continue
			case !hs.IsZero() && ps.stuck.Equal(hs):
				continue
			}
			ps.relayed, ps.probed = in.Now, in.Now
		}
		relay := ChooseRelay(in.Self, p.Node, in.Candidates)
		if relay == "" {
			// Nobody to relay through: stay direct and keep trying.
			ps.relayed, ps.probed, ps.stuck = time.Time{}, time.Time{}, hs
			continue
		}
		plan.via[p.Node] = relay
		if in.Now.Sub(ps.probed) >= in.Retry {
			ps.probed = in.Now
			plan.probe = append(plan.probe, p.Node)
		}
		due(ps.probed.Add(in.Retry))
	}
	for n := range paths {
		if !desired[n] {
			delete(paths, n)
		}
	}
	slices.Sort(plan.probe)
	return plan
}

func isExternalPeerNode(node string) bool { return strings.HasPrefix(node, "peer:") }

// WithRelays applies the plan to d: a relayed far node's peer keeps its
// endpoint but loses its allowed IPs to the relay's peer, and says via
// whom. A pair whose relay is not among our peers stays direct.
func WithRelays(d Desired, via map[string]string) Desired {
	if len(via) == 0 {
		return d
	}
	at := map[string]int{}
	for i, p := range d.Peers {
		at[p.Node] = i
	}
	peers := slices.Clone(d.Peers)
	for far, relay := range via {
		i, ok := at[far]
		j, ok2 := at[relay]
		if !ok || !ok2 {
			continue
		}
		peers[j].AllowedIPs = append(slices.Clone(peers[j].AllowedIPs), peers[i].AllowedIPs...)
		sortPrefixes(peers[j].AllowedIPs)
		peers[i].AllowedIPs = nil
		peers[i].Via = relay
	}
	d.Peers = peers
	return d
}

// handshakesOf reads the last handshake per peer from the device.
func handshakesOf(dev *wgtypes.Device) map[wgtypes.Key]time.Time {
	m := make(map[wgtypes.Key]time.Time, len(dev.Peers))
	for _, p := range dev.Peers {
		m[p.PublicKey] = p.LastHandshakeTime
	}
	return m
}

// probeConfig makes the device send a handshake initiation to each named
// peer now, as InitiateHandshakes does for all.
func probeConfig(d Desired, nodes []string) wgtypes.Config {
	var cfg wgtypes.Config
	for _, p := range d.Peers {
		if !slices.Contains(nodes, p.Node) {
			continue
		}
		cfg.Peers = append(cfg.Peers, initiation(p.PublicKey, p.Keepalive)...)
	}
	return cfg
}

// due reports whether a pass would change a relay decision at now, from
// the device's handshakes: a relayed pair's direct path had a handshake,
// or a direct path went stale. It reads what planRelays left and changes
// nothing; bounds and retries that fall due at a known time are the
// plan's next instead.
func due(now time.Time, handshakes map[wgtypes.Key]time.Time, paths map[string]*pathState) bool {
	for _, ps := range paths {
		hs := handshakes[ps.key]
		if !ps.relayed.IsZero() {
			if ps.directAgain(hs) {
				return true
			}
			continue
		}
		if ps.wentStale(now, hs) && !ps.stuck.Equal(hs) {
			return true
		}
	}
	return false
}

// directAgain reports whether a relayed pair's direct path had a handshake
// (hs, its latest) since the pair was relayed or its path last tried.
func (ps *pathState) directAgain(hs time.Time) bool {
	return hs.After(ps.relayed) || !ps.probed.IsZero() && hs.After(ps.probed)
}

// wentStale reports whether a direct path whose latest handshake is hs
// has gone without one for its staleBound at now (never without a bound
// or a handshake).
func (ps *pathState) wentStale(now, hs time.Time) bool {
	return !hs.IsZero() && ps.stale > 0 && now.Sub(hs) >= ps.stale
}

// relayer is the reconciler's relay state between passes.
type relayer struct {
	after, retry, stale time.Duration
	paths               map[string]*pathState
	// via is the last pass's relayed pairs; next when a decision falls
	// due (see relayPlan).
	via  map[string]string
	next time.Time
}

// plan decides the relays of a full pass from the device's handshakes;
// with no relay candidate in the cluster it does nothing at all.
func (rl *relayer) plan(self string, now time.Time, list NodeList, d Desired, dev *wgtypes.Device) relayPlan {
	cands := RelayCandidates(list)
	if len(cands) == 0 {
		rl.paths, rl.via, rl.next = nil, nil, time.Time{}
		return relayPlan{}
	}
	if rl.paths == nil {
		rl.paths = map[string]*pathState{}
	}
	p := planRelays(RelayInput{Self: self, Now: now, Candidates: cands, Handshakes: handshakesOf(dev),
		After: cmp.Or(rl.after, DefaultRelayAfter), Retry: cmp.Or(rl.retry, DefaultRelayRetry),
		Stale: cmp.Or(rl.stale, DefaultRelayStale)}, d.Peers, rl.paths)
	rl.via, rl.next = p.via, p.next
	return p
}

// watching reports whether relaying is on (the last full pass found
// candidates), so that the device is worth watching between passes.
func (rl *relayer) watching() bool { return len(rl.paths) > 0 }
