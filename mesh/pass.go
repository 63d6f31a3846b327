package mesh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// reconcile is one pass: list and parse the Nodes, bring our own Node in
// line, compute the desired peers and routes, apply the per-peer diff to
// the device and the routes to the dataplane, and record the outcome in
// r.status. Each step's error is collected and the steps it does not
// affect still run.
func (r *Reconciler) reconcile(ctx context.Context) error {
	synced := r.cfg.Source.HasSynced()
	raws, err := r.cfg.Source.Nodes()
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var errs []error

	list := ParseNodes(raws, r.cfg.NodeName)
	self, err := r.own.sync(ctx, list)
	if err != nil {
		errs = append(errs, err)
	}

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
		Resolved:         r.resolver.resolve(ctx, list.Nodes),
		Configured:       ConfiguredFrom(dev),
		KnownKeys:        r.knownKeys,
	})
	r.report(d)

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

	routes := routesFor(d, dev, synced, self.PodCIDRs)
	if err := r.cfg.Dataplane.Apply(ctx, DataplaneState{
		LocalPodCIDRs:  slices.Clone(self.PodCIDRs),
		RemotePodCIDRs: routes,
		MTU:            r.cfg.MTU,
	}); err != nil {
		errs = append(errs, fmt.Errorf("apply dataplane: %w", err))
	}
	r.updateStatus(synced, list.Own != nil, self, d, routes)
	return errors.Join(errs...)
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
// Status.DeviceWrites.
type countingDevice struct {
	dev    Device
	writes uint64
}

func (d *countingDevice) Device() (*wgtypes.Device, error) { return d.dev.Device() }

func (d *countingDevice) ConfigureDevice(cfg wgtypes.Config) error {
	d.writes++
	return d.dev.ConfigureDevice(cfg)
}
