package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// reconcile is one pass: list and parse the Nodes, bring our own Node in
// line, compute the desired peers and routes, apply the per-peer diff to
// the device and the routes to the dataplane, and record the outcome in
// r.status. Each step's error is collected and the steps it does not
// affect still run.
//
// A pass on a change signal (full false) may instead take the incremental
// path (see incremental); it too starts from the full Node list.
func (r *Reconciler) reconcile(ctx context.Context, full bool) error {
	r.last.valid = r.last.valid && !full
	r.incrementalPass = false
	synced := r.cfg.Source.HasSynced()
	raws, err := r.cfg.Source.Nodes()
	if err != nil {
		r.last.valid = false
		return fmt.Errorf("list nodes: %w", err)
	}
	var errs []error

	list, delta := r.parser.parse(raws, r.cfg.NodeName)
	self, err := r.own.sync(ctx, list)
	if err != nil {
		errs = append(errs, err)
	}
	resolved := r.resolver.resolve(ctx, list.Nodes)
	ext, err := r.external(ctx, raws, list)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if done, err := r.incremental(ctx, synced, list.Own != nil, self, resolved, delta); done {
			r.incrementalPass = true
			return err
		}
	}
	r.last.valid = false

	dev, err := r.dev.Device()
	if err != nil {
		// Without the device we know neither incumbents nor what to
		// change; leave the dataplane as it is rather than guess.
		errs = append(errs, fmt.Errorf("read device: %w", err))
		r.updateStatus(synced, list.Own != nil, self, Desired{}, nil)
		return errors.Join(errs...)
	}

	d := Compute(Input{
		Self:             self,
		Parsed:           &list,
		DefaultKeepalive: r.cfg.DefaultKeepalive,
		Resolved:         resolved,
		Configured:       ConfiguredFrom(dev),
		KnownKeys:        r.knownKeys,
	})
	r.report(d)
	d = WithExternal(d, ext, r.cfg.DefaultKeepalive)
	prevVia := r.relays.via
	plan := r.relays.plan(r.cfg.NodeName, r.passStart, list, d, dev)
	d = WithRelays(d, plan.via)
	for far, relay := range plan.via {
		if prevVia[far] != relay {
			r.log.Info("no handshake on the direct path; relaying", "peer_node", far, "relay", relay)
		}
	}
	for far := range prevVia {
		if _, still := plan.via[far]; !still {
			r.log.Info("direct path again", "peer_node", far)
		}
	}

	cfg := Diff(d, dev, DiffOptions{LastApplied: r.lastApplied, GC: synced, KnownKeys: r.knownKeys})
	if !IsEmpty(cfg) {
		if err := r.dev.ConfigureDevice(cfg); err != nil {
			errs = append(errs, fmt.Errorf("configure device: %w", err))
		} else {
			r.logChanges(d, cfg)
			r.recordApplied(d, dev, cfg)
			r.recordKeys(d)
		}
	} else {
		r.recordApplied(d, dev, cfg)
		r.recordKeys(d)
		r.log.Debug("device already converged", "peers", len(d.Peers))
	}

	if len(plan.probe) > 0 {
		// Try the direct paths of relayed pairs: a failure only delays
		// going direct again.
		if err := r.dev.ConfigureDevice(probeConfig(d, plan.probe)); err != nil {
			r.log.Warn("could not try the direct path of relayed peers", "peer_nodes", plan.probe, "err", err)
		}
	}

	routes := routesFor(d, dev, synced, self.PodCIDRs)
	if err := r.cfg.Dataplane.Apply(ctx, DataplaneState{
		LocalPodCIDRs:  slices.Clone(self.PodCIDRs),
		RemotePodCIDRs: routes,
		MTU:            r.mtu,
	}); err != nil {
		errs = append(errs, fmt.Errorf("apply dataplane: %w", err))
	}
	r.updateStatus(synced, list.Own != nil, self, d, routes)
	// Compute settles conflicts in favour of peers on the device, so a
	// write that added, removed or re-addressed peers can change the
	// next Compute's answer (which node a loser is reported against)
	// with no Node changed: the next pass must be a full one too.
	// With pairs relayed, the incremental path would put a relayed node's
	// prefixes back on its own peer: every pass is a full one then.
	if len(errs) == 0 && !changesIncumbents(cfg) && len(plan.via) == 0 {
		r.remember(synced, self, resolved, d, routes)
	}
	return errors.Join(errs...)
}

// changesIncumbents reports whether cfg adds, removes or re-addresses a
// peer.
func changesIncumbents(cfg wgtypes.Config) bool {
	for _, pc := range cfg.Peers {
		if pc.Remove || !pc.UpdateOnly || pc.ReplaceAllowedIPs {
			return true
		}
	}
	return false
}

func (r *Reconciler) updateStatus(synced, selfFound bool, self Self, d Desired, routes []netip.Prefix) {
	r.status.Synced = synced
	r.status.SelfFound = selfFound
	r.status.PublicKey = r.own.pub
	r.status.LocalPodCIDRs = self.PodCIDRs
	r.status.Peers = d.Peers
	r.status.Excluded = d.Excluded
	r.status.Degraded = d.Degraded
	r.status.Routes = routes
}

// recordKeys remembers which key each desired peer's node has on the
// device now.
func (r *Reconciler) recordKeys(d Desired) {
	clear(r.knownKeys)
	for _, p := range d.Peers {
		r.knownKeys[p.Node] = p.PublicKey
	}
}

// report logs and raises an event for each excluded or degraded node, once
// per change of (reason, message), and forgets nodes that recovered.
func (r *Reconciler) report(d Desired) {
	seen := map[string]bool{}
	emit := func(e Exclusion, excluded bool) {
		seen[e.Node] = true
		msg := e.Err.Error()
		if !r.peerWarn.Fresh(e.Node, string(e.Reason)+"\x00"+msg) {
			return
		}
		if excluded {
			r.log.Warn("node excluded from the mesh", "peer_node", e.Node, "reason", e.Reason, "err", msg)
			r.cfg.Source.Warn(e.Node, string(e.Reason), "excluded from the wgmesh mesh: "+msg)
		} else {
			r.log.Warn("peer degraded", "peer_node", e.Node, "reason", e.Reason, "err", msg)
			r.cfg.Source.Warn(e.Node, string(e.Reason), msg)
		}
	}
	for _, e := range d.Excluded {
		emit(e, true)
	}
	for _, e := range d.Degraded {
		emit(e, false)
	}
	for _, n := range r.peerWarn.ForgetExcept(seen) {
		r.log.Info("node no longer excluded or degraded", "peer_node", n)
	}
}

func (r *Reconciler) logChanges(d Desired, cfg wgtypes.Config) {
	names := map[wgtypes.Key]string{}
	for _, p := range d.Peers {
		names[p.PublicKey] = p.Node
	}
	for _, pc := range cfg.Peers {
		switch {
		case pc.Remove:
			r.log.Info("removed peer", "key", pc.PublicKey.String())
		case pc.UpdateOnly:
			r.log.Info("updated peer", "peer_node", names[pc.PublicKey], "key", pc.PublicKey.String(),
				"endpoint", pc.Endpoint, "allowed_ips_replaced", pc.ReplaceAllowedIPs)
		default:
			r.log.Info("added peer", "peer_node", names[pc.PublicKey], "key", pc.PublicKey.String(), "endpoint", pc.Endpoint)
		}
	}
}

// recordApplied remembers, per desired peer, the endpoint that the device
// now holds because we wrote it or because it already matched the
// published one; roamed endpoints leave the memory unchanged.
func (r *Reconciler) recordApplied(d Desired, dev *wgtypes.Device, cfg wgtypes.Config) {
	written := map[wgtypes.Key]bool{}
	for _, pc := range cfg.Peers {
		if pc.Endpoint != nil && !pc.Remove {
			written[pc.PublicKey] = true
		}
	}
	devEP := map[wgtypes.Key]netip.AddrPort{}
	for _, p := range dev.Peers {
		if ap, ok := addrPortOf(p.Endpoint); ok {
			devEP[p.PublicKey] = ap
		}
	}
	want := map[wgtypes.Key]bool{}
	for _, p := range d.Peers {
		want[p.PublicKey] = true
		if !p.Endpoint.IsValid() {
			continue
		}
		if written[p.PublicKey] || devEP[p.PublicKey] == p.Endpoint {
			r.lastApplied[p.PublicKey] = p.Endpoint
		}
	}
	for k := range r.lastApplied {
		if !want[k] {
			delete(r.lastApplied, k)
		}
	}
}

// routesFor returns the remote prefixes to route through the device: the
// desired ones, plus, before the source has synced, those of device peers
// that Diff kept (so a restart does not drop routes of nodes not listed
// yet). Prefixes overlapping a desired route or a local one are left out.
func routesFor(d Desired, dev *wgtypes.Device, synced bool, local []netip.Prefix) []netip.Prefix {
	routes := slices.Clone(d.Routes)
	if !synced && dev != nil {
		want := map[wgtypes.Key]bool{}
		for _, p := range d.Peers {
			want[p.PublicKey] = true
		}
		for _, p := range dev.Peers {
			if want[p.PublicKey] {
				continue
			}
			for _, q := range prefixesFromIPNets(p.AllowedIPs) {
				if _, _, clash := firstOverlap([]netip.Prefix{q}, routes); clash {
					continue
				}
				if _, _, clash := firstOverlap([]netip.Prefix{q}, local); clash {
					continue
				}
				routes = append(routes, q)
			}
		}
	}
	sortPrefixes(routes)
	return routes
}

// countingDevice counts ConfigureDevice calls, failed ones included, for
// Status.DeviceWrites, and keeps a snapshot of the device for the
// incremental path: the last full read with every successful write since
// applied to it, as wireguard-go applies them. The snapshot misses what
// the device changes on its own (roamed endpoints, handshake counters) and
// what others write over the UAPI socket; Diff does not act on the former
// and the full pass of the periodic resync reads the device afresh.
type countingDevice struct {
	dev    Device
	writes uint64
	// snap is nil while unknown: before the first read and after a failed
	// read or write. idx maps a peer's key to its index in snap.Peers.
	snap *wgtypes.Device
	idx  map[wgtypes.Key]int
}

// Device reads the device and makes the result the new snapshot.
func (d *countingDevice) Device() (*wgtypes.Device, error) {
	dev, err := d.dev.Device()
	if err != nil {
		d.snap = nil
		return nil, err
	}
	// A shallow copy: patching replaces a peer's fields and slices, never
	// writes into them, so the caller's copy stays as read.
	s := *dev
	s.Peers = slices.Clone(dev.Peers)
	d.snap = &s
	d.idx = make(map[wgtypes.Key]int, len(s.Peers))
	for i, p := range s.Peers {
		d.idx[p.PublicKey] = i
	}
	return dev, nil
}

func (d *countingDevice) ConfigureDevice(cfg wgtypes.Config) error {
	d.writes++
	if err := d.dev.ConfigureDevice(cfg); err != nil {
		d.snap = nil // how much of it applied is unknown
		return err
	}
	if d.snap != nil {
		applyConfig(d.snap, d.idx, cfg)
	}
	return nil
}

// snapshot returns the device as of the last read plus our writes since,
// or nil if unknown. The caller must not modify it.
func (d *countingDevice) snapshot() *wgtypes.Device { return d.snap }

// applyConfig applies cfg to dev with wireguard-go's UAPI semantics: nil
// fields are left alone, UpdateOnly ignores unknown peers, Remove deletes,
// ReplaceAllowedIPs clears before adding, and an allowed IP given to one
// peer is taken from any other that had exactly that prefix (WireGuard's
// table maps a prefix to one peer). Slices of dev are replaced, never
// written into (see countingDevice.Device).
func applyConfig(dev *wgtypes.Device, idx map[wgtypes.Key]int, cfg wgtypes.Config) {
	if cfg.PrivateKey != nil {
		dev.PrivateKey = *cfg.PrivateKey
		dev.PublicKey = cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		dev.ListenPort = *cfg.ListenPort
	}
	if cfg.FirewallMark != nil {
		dev.FirewallMark = *cfg.FirewallMark
	}
	if cfg.ReplacePeers {
		dev.Peers = nil
		clear(idx)
	}
	var owner map[netip.Prefix]wgtypes.Key // built on the first allowed IP
	for _, pc := range cfg.Peers {
		i, ok := idx[pc.PublicKey]
		if pc.Remove {
			if ok {
				last := len(dev.Peers) - 1
				dev.Peers[i] = dev.Peers[last]
				idx[dev.Peers[i].PublicKey] = i
				dev.Peers = dev.Peers[:last]
				delete(idx, pc.PublicKey)
			}
			continue
		}
		if !ok {
			if pc.UpdateOnly {
				continue
			}
			dev.Peers = append(dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1})
			i = len(dev.Peers) - 1
			idx[pc.PublicKey] = i
		}
		p := &dev.Peers[i]
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			e := *pc.Endpoint
			p.Endpoint = &e
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		if len(pc.AllowedIPs) == 0 {
			continue
		}
		if owner == nil {
			owner = make(map[netip.Prefix]wgtypes.Key, len(dev.Peers))
			for _, q := range dev.Peers {
				for _, a := range prefixesFromIPNets(q.AllowedIPs) {
					owner[a] = q.PublicKey
				}
			}
		}
		for _, a := range prefixesFromIPNets(pc.AllowedIPs) {
			if prev, ok := owner[a]; ok && prev != pc.PublicKey {
				if j, ok := idx[prev]; ok {
					q := &dev.Peers[j]
					q.AllowedIPs = slices.DeleteFunc(slices.Clone(q.AllowedIPs), func(n net.IPNet) bool {
						b := prefixesFromIPNets([]net.IPNet{n})
						return len(b) == 1 && b[0] == a
					})
				}
			}
			owner[a] = pc.PublicKey
			have := prefixesFromIPNets(p.AllowedIPs)
			if !slices.Contains(have, a) {
				p.AllowedIPs = append(slices.Clip(p.AllowedIPs), ipNetsFromPrefixes([]netip.Prefix{a})...)
			}
		}
	}
}
