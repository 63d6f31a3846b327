package mesh

import (
	"cmp"
	"hash/fnv"
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
// RelayAfter of wanting it (handshakes complete on both ends), and the
// relay is chosen from the same candidates by the same hash. The direct
// peer stays on the device, without allowed IPs, and is sent a handshake
// every RelayRetry; once one completes, the pair goes direct again.
const (
	// AnnotationRelay marks a node as a relay candidate ("true"): it must
	// be reachable by every node (a public endpoint).
	AnnotationRelay = AnnotationPrefix + "relay"
	// DefaultRelayAfter is how long a direct path may go without a
	// handshake before the pair is relayed: the greeting at peer creation
	// and WireGuard's retries every 5 s give three chances.
	DefaultRelayAfter = 15 * time.Second
	// DefaultRelayRetry is how often a relayed pair's direct path is tried.
	DefaultRelayRetry = time.Minute
)

// RelayCandidates returns the names of the nodes marked AnnotationRelay,
// sorted, from the parsed list (our own Node included).
func RelayCandidates(list NodeList) []string {
	var out []string
	for _, n := range list.Nodes {
		if n.Relay {
			out = append(out, n.Name)
		}
	}
	if list.Own != nil && isRelay(list.Own.Raw) {
		out = append(out, list.SelfName)
	}
	slices.Sort(out)
	return out
}

func isRelay(raw RawNode) bool {
	return strings.EqualFold(strings.TrimSpace(raw.Annotations[AnnotationRelay]), "true")
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
		hs := in.Handshakes[p.PublicKey]
		if !ps.relayed.IsZero() {
			if hs.After(ps.relayed) || hs.After(ps.probed) && !ps.probed.IsZero() {
				// A handshake on the direct path since we relayed or
				// last tried: it works (again).
				ps.relayed, ps.probed, ps.wanted = time.Time{}, time.Time{}, in.Now
				continue
			}
		} else {
			if !hs.IsZero() || in.Now.Sub(ps.wanted) < in.After {
				if hs.IsZero() {
					due(ps.wanted.Add(in.After))
				}
				continue
			}
			ps.relayed, ps.probed = in.Now, in.Now
		}
		relay := ChooseRelay(in.Self, p.Node, in.Candidates)
		if relay == "" {
			// Nobody to relay through: stay direct and keep trying.
			ps.relayed, ps.probed = time.Time{}, time.Time{}
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

// withRelays applies the plan to d: a relayed far node's peer keeps its
// endpoint but loses its allowed IPs to the relay's peer, and says via
// whom. A pair whose relay is not among our peers stays direct.
func withRelays(d Desired, via map[string]string) Desired {
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

// relayer is the reconciler's relay state between passes.
type relayer struct {
	after, retry time.Duration
	paths        map[string]*pathState
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
		After: cmp.Or(rl.after, DefaultRelayAfter), Retry: cmp.Or(rl.retry, DefaultRelayRetry)}, d.Peers, rl.paths)
	rl.via, rl.next = p.via, p.next
	return p
}
