package mesh

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// lastPass is what the previous pass computed, kept for the incremental
// path. It is valid only after a pass that succeeded in every step and
// whose parse was the parser's latest.
type lastPass struct {
	valid    bool
	synced   bool
	self     Self
	resolved map[string]netip.Addr
	desired  Desired
	// peerAt maps a node name to its index in desired.Peers.
	peerAt map[string]int
	routes []netip.Prefix
}

// remember records a successful full pass for the incremental path.
func (r *Reconciler) remember(synced bool, self Self, resolved map[string]netip.Addr, d Desired, routes []netip.Prefix) {
	peerAt := make(map[string]int, len(d.Peers))
	for i, p := range d.Peers {
		peerAt[p.Node] = i
	}
	r.last = lastPass{valid: true, synced: synced, self: self, resolved: maps.Clone(resolved),
		desired: d, peerAt: peerAt, routes: routes}
}

// incremental is the pass for a change signal when little changed: every
// Node was listed and parsed as in a full pass, but when the only changes
// since the last successful pass are in peers' endpoints or keepalives,
// the peers' conflicts (keys, pod prefixes, age), the routes and the
// dataplane cannot have changed. Then only the changed peers are computed
// and diffed, against the device snapshot (the last read plus our writes
// since) instead of a fresh read, and the dataplane is left alone. It
// reports false, having done nothing, when a full pass is needed:
// anything structural changed (Nodes added, removed, renamed, keys or
// prefixes changed, an invalid Node changed), this node itself changed,
// a name resolved differently, or the last pass did not succeed. The
// periodic resync always runs the full pass, which reads the device and
// re-applies the dataplane, so what the snapshot misses (a peer someone
// removed by hand) is repaired there.
func (r *Reconciler) incremental(ctx context.Context, synced, selfFound bool, self Self, resolved map[string]netip.Addr, delta listDelta) (bool, error) {
	last := &r.last
	snap := r.dev.snapshot()
	if !last.valid || snap == nil || delta.Structural || synced != last.synced ||
		!sameSelf(self, last.self) || !maps.Equal(resolved, last.resolved) {
		return false, nil
	}
	type change struct {
		i    int
		node Node
	}
	changes := make([]change, 0, len(delta.Changed))
	for _, c := range delta.Changed {
		i, ok := last.peerAt[c.Name]
		if !ok || c.Old == nil || c.New == nil || c.New.PublicKey != c.Old.PublicKey ||
			!c.New.Created.Equal(c.Old.Created) || !slices.Equal(c.New.PodCIDRs, c.Old.PodCIDRs) {
			return false, nil
		}
		if _, onDevice := r.dev.idx[c.New.PublicKey]; !onDevice {
			return false, nil
		}
		changes = append(changes, change{i, *c.New})
	}

	d := &last.desired
	var changed []Peer
	var sub wgtypes.Device
	degraded := map[string]*Exclusion{}
	for _, c := range changes {
		p, deg, isDegraded := peerFor(towards(c.node, self), self.Keepalive, r.cfg.DefaultKeepalive, resolved)
		d.Peers[c.i] = p
		changed = append(changed, p)
		sub.Peers = append(sub.Peers, snap.Peers[r.dev.idx[p.PublicKey]])
		degraded[p.Node] = nil
		if isDegraded {
			degraded[p.Node] = &deg
		}
	}
	if len(degraded) > 0 {
		d.Degraded = slices.DeleteFunc(d.Degraded, func(e Exclusion) bool {
			_, ok := degraded[e.Node]
			return ok
		})
		for _, e := range degraded {
			if e != nil {
				d.Degraded = append(d.Degraded, *e)
			}
		}
		sortExclusions(d.Degraded)
		if len(d.Degraded) == 0 {
			d.Degraded = nil // as Compute leaves it
		}
	}
	r.report(*d)

	part := Desired{Peers: changed}
	cfg := Diff(part, &sub, DiffOptions{LastApplied: r.lastApplied, KnownKeys: r.knownKeys})
	var err error
	if !IsEmpty(cfg) {
		if werr := r.dev.ConfigureDevice(cfg); werr != nil {
			err = fmt.Errorf("configure device: %w", werr)
			last.valid = false
		} else {
			r.logChanges(part, cfg)
		}
	}
	if err == nil {
		r.recordAppliedFor(changed, &sub, cfg)
	}
	r.updateStatus(synced, selfFound, self, *d, last.routes)
	return true, err
}

// recordAppliedFor is recordApplied for some of the desired peers: it
// forgets nothing about the others.
func (r *Reconciler) recordAppliedFor(peers []Peer, dev *wgtypes.Device, cfg wgtypes.Config) {
	written := map[wgtypes.Key]bool{}
	for _, pc := range cfg.Peers {
		if pc.Endpoint != nil && !pc.Remove {
			written[pc.PublicKey] = true
		}
	}
	for _, p := range peers {
		if !p.Endpoint.IsValid() {
			continue
		}
		if written[p.PublicKey] {
			r.lastApplied[p.PublicKey] = p.Endpoint
			continue
		}
		for _, q := range dev.Peers {
			if ap, ok := addrPortOf(q.Endpoint); ok && q.PublicKey == p.PublicKey && ap == p.Endpoint {
				r.lastApplied[p.PublicKey] = p.Endpoint
			}
		}
	}
}

func sameSelf(a, b Self) bool {
	if a.Name != b.Name || a.PublicKey != b.PublicKey || !slices.Equal(a.PodCIDRs, b.PodCIDRs) || a.Location != b.Location {
		return false
	}
	if (a.Keepalive == nil) != (b.Keepalive == nil) {
		return false
	}
	return a.Keepalive == nil || *a.Keepalive == *b.Keepalive
}
