// Package dataplane makes a node's kernel networking match the mesh: the pod
// bridge with its gateway addresses (this package is the bridge's only
// owner; the CNI plugin refuses ADD until the bridge is ready rather than
// making it, see EnsureBridge), the WireGuard link state, a route per
// remote pod prefix through the WireGuard interface, forwarding sysctls and
// wgmesh's nftables rules, and keeps the node fail-closed: a catch-all
// unreachable route per cluster pod range and a guard table that drops pod
// traffic about to leave by any other interface than the mesh's (see
// Prepare and Guard). The planning logic is plain Go over the System
// interface; the Linux implementation (netlink, nftables, /proc/sys) lives in
// the _linux.go files.
package dataplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Defaults for Config fields left zero.
const (
	DefaultBridge = nodenet.Bridge
	DefaultTable  = nodenet.MainTable
	// DefaultGuardTable holds the fail-closed guard (see Guard); the CNI
	// plugin looks for it by this name.
	DefaultGuardTable = nodenet.GuardTable
	// DefaultRouteProtocol tags the routes we create (rtm_protocol), so we
	// find and delete our stale routes and never touch anybody else's. 157
	// is not assigned in iproute2's rt_protos.
	DefaultRouteProtocol = 157
	// FailClosedMetric is the metric of the catch-all unreachable route
	// per cluster range. Any more specific route wins regardless (the
	// per-node routes through WireGuard, the bridge's connected route);
	// the high metric also lets a same-prefix route win: a remote or local
	// pod range that happens to equal a cluster range (IPv6 connected
	// routes have metric 256).
	FailClosedMetric = 2_000_000_000
)

// DefaultClusterCIDRs is the cluster pod range when none is configured.
var DefaultClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}

// Sentinel errors.
var (
	// ErrNotBridge: a link with the bridge's name exists but is no bridge;
	// it is somebody else's and we leave it alone.
	ErrNotBridge = errors.New("link exists and is not a bridge")
	// ErrNoLink: the WireGuard interface does not exist.
	ErrNoLink = errors.New("link not found")
	// ErrRouteConflict: a route to the destination exists that we did not
	// create; we do not replace it.
	ErrRouteConflict = errors.New("a route to this destination exists and is not ours")
)

// Config configures a Dataplane.
type Config struct {
	// WGInterface is the WireGuard interface remote pod prefixes route to.
	WGInterface string
	// Bridge the pods attach to; DefaultBridge if empty.
	Bridge string
	// ClusterCIDRs are the cluster's pod ranges: pod traffic to them is
	// never masqueraded. DefaultClusterCIDRs if empty.
	ClusterCIDRs []netip.Prefix
	// RouteProtocol tags our routes; DefaultRouteProtocol if zero.
	RouteProtocol int
	// Table is our nftables table (family inet); DefaultTable if empty.
	Table string
	// GuardTable holds the fail-closed guard; DefaultGuardTable if empty.
	GuardTable string
	Logger     *slog.Logger
	// System changes the host; nil means the running kernel (see
	// NewSystem). Tests pass an in-memory one.
	System System
}

// RouteType is a route's kind (rtm_type).
type RouteType int

const (
	// RouteUnicast is an ordinary route through a device.
	RouteUnicast RouteType = iota
	// RouteUnreachable answers with ICMP unreachable and sends nothing.
	RouteUnreachable
)

func (t RouteType) String() string {
	if t == RouteUnreachable {
		return "unreachable"
	}
	return "unicast"
}

// Route is one of our routes: through the WireGuard interface, or a
// fail-closed unreachable route.
type Route struct {
	Dst  netip.Prefix
	Type RouteType
	// Dev is the output interface of a unicast route; empty for
	// unreachable routes.
	Dev string
	// Src is the preferred source for host-originated packets; invalid
	// means none. It is our bridge gateway, so the host talks to remote
	// pods from a pod-range address the peers' allowed-IPs accept, instead
	// of its underlay address.
	Src      netip.Addr
	Protocol int
	// Metric (priority) of an unreachable route. Unicast routes get the
	// kernel's default metric; it is neither set nor compared.
	Metric int
}

// key identifies a route among ours: a destination may have both a unicast
// and an unreachable route.
type routeKey struct {
	dst netip.Prefix
	typ RouteType
}

func (r Route) key() routeKey { return routeKey{r.Dst, r.Type} }

// same reports whether have (as listed) matches want.
func (r Route) same(want Route) bool {
	if r.Type != want.Type || r.Dst != want.Dst || r.Protocol != want.Protocol {
		return false
	}
	if want.Type == RouteUnreachable {
		return r.Metric == want.Metric
	}
	return r.Dev == want.Dev && r.Src == want.Src
}

// System is the host's networking as the planner sees it. Every method is
// one small, idempotent-friendly kernel operation.
type System interface {
	// EnsureBridge creates the bridge if missing, with a fixed MAC, pins
	// the MAC of one that exists (an unset bridge MAC follows the lowest
	// port's and changes as pods come and go, stranding the pods' ARP
	// entries for the gateway), sets its MTU (unless mtu is 0) and sets it
	// up. It fails with ErrNotBridge if a link of that name is not a bridge.
	EnsureBridge(name string, mtu int) error
	// EnsureLinkUp sets an existing link up and, unless mtu is 0, its MTU.
	// It fails with ErrNoLink if the link does not exist.
	EnsureLinkUp(name string, mtu int) error
	// Addrs lists the link's global-scope addresses (address/prefix len).
	Addrs(link string) ([]netip.Prefix, error)
	AddAddr(link string, addr netip.Prefix) error
	DelAddr(link string, addr netip.Prefix) error
	// Routes lists the main table's routes tagged with protocol.
	Routes(protocol int) ([]Route, error)
	// AddRoute adds a route; ErrRouteConflict if one to Dst (with the same
	// metric) exists.
	AddRoute(r Route) error
	// ReplaceRoute replaces our own route to r.Dst.
	ReplaceRoute(r Route) error
	// DelRoute deletes our route of r's destination, type and metric.
	DelRoute(r Route) error
	// Sysctl reads and SetSysctl writes a key such as
	// "net.ipv4.ip_forward".
	Sysctl(key string) (string, error)
	SetSysctl(key, value string) error
	// ApplyFirewall makes the nftables rules match fw, atomically.
	ApplyFirewall(fw Firewall) error
	// ApplyGuard makes the guard table match g, atomically, and leaves a
	// matching one untouched.
	ApplyGuard(g Guard) error
	// RemoveFirewall deletes the named tables of ours and our rules in
	// chains we do not own.
	RemoveFirewall(tables ...string) error
	// DeleteLink deletes the named link; a missing one is no error.
	DeleteLink(name string) error
}

// Dataplane implements mesh.Dataplane.
type Dataplane struct {
	cfg Config
	log *slog.Logger
}

var _ mesh.Dataplane = (*Dataplane)(nil)

// New fills defaults and validates cfg. It does no I/O.
func New(cfg Config) (*Dataplane, error) {
	cfg.Bridge = cmp.Or(cfg.Bridge, DefaultBridge)
	cfg.Table = cmp.Or(cfg.Table, DefaultTable)
	cfg.GuardTable = cmp.Or(cfg.GuardTable, DefaultGuardTable)
	cfg.RouteProtocol = cmp.Or(cfg.RouteProtocol, DefaultRouteProtocol)
	if len(cfg.ClusterCIDRs) == 0 {
		cfg.ClusterCIDRs = DefaultClusterCIDRs
	}
	if cfg.WGInterface == "" {
		return nil, errors.New("dataplane: wireguard interface name is empty")
	}
	if cfg.WGInterface == cfg.Bridge {
		return nil, fmt.Errorf("dataplane: bridge and wireguard interface are both %q", cfg.Bridge)
	}
	if cfg.Table == cfg.GuardTable {
		return nil, fmt.Errorf("dataplane: table and guard table are both %q", cfg.Table)
	}
	for _, p := range cfg.ClusterCIDRs {
		if !p.IsValid() || p.Masked() != p {
			return nil, fmt.Errorf("dataplane: cluster cidr %s is not a network prefix", p)
		}
	}
	if cfg.RouteProtocol < 0 || cfg.RouteProtocol > 255 {
		return nil, fmt.Errorf("dataplane: route protocol %d out of range", cfg.RouteProtocol)
	}
	if cfg.System == nil {
		cfg.System = NewSystem()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dataplane{cfg: cfg, log: log}, nil
}

// Prepare makes the node fail-closed before anything else happens: it adds
// the catch-all unreachable route of every cluster range that is missing
// and installs the guard table. It needs no mesh state and leaves
// everything else alone (the routes and rules a previous run left keep
// carrying traffic until the first Apply), so the agent calls it first
// thing at start. The agent never removes either on exit.
func (d *Dataplane) Prepare(ctx context.Context) error {
	var errs []error
	have, err := d.cfg.System.Routes(d.cfg.RouteProtocol)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	present := map[routeKey]Route{}
	for _, r := range have {
		present[r.key()] = r
	}
	for _, r := range d.failClosedRoutes() {
		cur, ok := present[r.key()]
		if ok && cur.same(r) {
			continue
		}
		if err == nil && ok {
			// Ours, with an old metric: fix it.
			if rerr := d.cfg.System.DelRoute(cur); rerr != nil {
				errs = append(errs, fmt.Errorf("delete route unreachable %s: %w", cur.Dst, rerr))
				continue
			}
		}
		if aerr := d.cfg.System.AddRoute(r); aerr != nil {
			errs = append(errs, fmt.Errorf("add route unreachable %s: %w", r.Dst, aerr))
			continue
		}
		d.log.Info("added fail-closed route", "dst", r.Dst, "type", r.Type, "metric", r.Metric)
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := d.cfg.System.ApplyGuard(d.guard()); err != nil {
		errs = append(errs, fmt.Errorf("fail-closed guard: %w", err))
	}
	return errors.Join(errs...)
}

// failClosedRoutes are the catch-all routes: every cluster range is
// unreachable unless a more specific route (a peer's pod range through
// WireGuard, the local bridge) says otherwise.
func (d *Dataplane) failClosedRoutes() []Route {
	var out []Route
	for _, c := range d.cfg.ClusterCIDRs {
		out = append(out, Route{Dst: c.Masked(), Type: RouteUnreachable, Protocol: d.cfg.RouteProtocol, Metric: FailClosedMetric})
	}
	return out
}

func (d *Dataplane) guard() Guard {
	return Guard{
		Table:        d.cfg.GuardTable,
		WGInterface:  d.cfg.WGInterface,
		Bridge:       d.cfg.Bridge,
		ClusterCIDRs: slices.Clone(d.cfg.ClusterCIDRs),
	}
}

// Apply converges the host to s. It carries on past a failed step so one
// problem (say a foreign route in the way) does not hold back the rest, and
// returns all failures joined.
func (d *Dataplane) Apply(ctx context.Context, s mesh.DataplaneState) error {
	cfg, sys := d.cfg, d.cfg.System
	var errs []error

	// The guard first: whatever else fails, the node stays fail-closed.
	if err := sys.ApplyGuard(d.guard()); err != nil {
		errs = append(errs, fmt.Errorf("fail-closed guard: %w", err))
	}

	gateways, err := gatewaysFor(s.LocalPodCIDRs)
	if err != nil {
		errs = append(errs, err)
	}

	// Bridge first: its addresses are the routes' source addresses.
	if err := d.ensureBridge(gateways, s.MTU); err != nil {
		errs = append(errs, err)
	}

	if err := sys.EnsureLinkUp(cfg.WGInterface, s.MTU); err != nil {
		errs = append(errs, fmt.Errorf("wireguard link %s: %w", cfg.WGInterface, err))
	} else if err := d.syncAddrs(cfg.WGInterface, tunnelAddrsFor(s.LocalPodCIDRs)); err != nil {
		errs = append(errs, err)
	}

	if err := d.syncSysctls(s); err != nil {
		errs = append(errs, err)
	}

	if err := d.syncRoutes(s.RemotePodCIDRs, gateways); err != nil {
		errs = append(errs, err)
	}

	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	fw := Firewall{
		Table:         cfg.Table,
		Bridge:        cfg.Bridge,
		WGInterface:   cfg.WGInterface,
		LocalPodCIDRs: slices.Clone(s.LocalPodCIDRs),
		ClusterCIDRs:  slices.Clone(cfg.ClusterCIDRs),
	}
	if err := sys.ApplyFirewall(fw); err != nil {
		errs = append(errs, fmt.Errorf("firewall: %w", err))
	}
	return errors.Join(errs...)
}

// EnsureBridge makes the pod bridge ready for the CNI plugin, as every
// Apply does: it exists (created with a fixed MAC), is up with mtu (unless
// 0), carries exactly the gateways of podCIDRs (nodenet.Gateway) and the
// node forwards for them. The agent's data plane is the bridge's only
// owner: the plugin checks the bridge and answers "try again later" while
// it is not ready. Exported for harnesses that run the plugin without the
// agent, so their bridge is the agent's, not a lookalike.
func (d *Dataplane) EnsureBridge(podCIDRs []netip.Prefix, mtu int) error {
	gateways, err := gatewaysFor(podCIDRs)
	return errors.Join(err,
		d.ensureBridge(gateways, mtu),
		d.syncSysctls(mesh.DataplaneState{LocalPodCIDRs: podCIDRs}))
}

func (d *Dataplane) ensureBridge(gateways []netip.Prefix, mtu int) error {
	if err := d.cfg.System.EnsureBridge(d.cfg.Bridge, mtu); err != nil {
		return fmt.Errorf("bridge %s: %w", d.cfg.Bridge, err)
	}
	return d.syncAddrs(d.cfg.Bridge, gateways)
}

func gatewaysFor(local []netip.Prefix) ([]netip.Prefix, error) {
	var gws []netip.Prefix
	var errs []error
	for _, p := range local {
		gw, err := nodenet.Gateway(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("local pod cidr: %w", err))
			continue
		}
		gws = append(gws, gw)
	}
	return gws, errors.Join(errs...)
}

// tunnelAddrsFor gives the WireGuard interface the network address of each
// local pod prefix, as a host address. The kernel's masquerade picks its
// source from the outgoing interface's own addresses, not the route's
// preferred source: with none on the tunnel, kube-proxy's masquerade of a
// NodePort or external client towards a pod on another node picked the
// underlay address, which the far peer's allowed IPs rightly drop. The
// network address is never a pod's or the gateway's (see ipam).
func tunnelAddrsFor(local []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range local {
		if p.IsValid() {
			a := p.Masked().Addr()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// syncAddrs makes a link's global addresses exactly want. The link is ours
// (the bridge and the WireGuard interface carry our names and we made them),
// so an address no longer wanted, e.g. after a podCIDR change, is removed.
func (d *Dataplane) syncAddrs(link string, want []netip.Prefix) error {
	have, err := d.cfg.System.Addrs(link)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link, err)
	}
	var errs []error
	for _, a := range want {
		if slices.Contains(have, a) {
			continue
		}
		if err := d.cfg.System.AddAddr(link, a); err != nil {
			errs = append(errs, fmt.Errorf("add address %s to %s: %w", a, link, err))
			continue
		}
		d.log.Info("added address", "link", link, "addr", a)
	}
	for _, a := range have {
		if slices.Contains(want, a) {
			continue
		}
		if err := d.cfg.System.DelAddr(link, a); err != nil {
			errs = append(errs, fmt.Errorf("remove address %s from %s: %w", a, link, err))
			continue
		}
		d.log.Info("removed stale address", "link", link, "addr", a)
	}
	return errors.Join(errs...)
}

// sysctlsFor lists the forwarding switches the node needs. IPv6 forwarding
// is turned on only for IPv6 pod ranges: on an IPv4-only node it would
// needlessly stop the host accepting router advertisements. The bridge
// never takes router advertisements: we route for it. (A bridge name with
// a dot cannot be written as a dotted key; forwarding already makes the
// kernel ignore advertisements there.)
func sysctlsFor(s mesh.DataplaneState, bridge string) [][2]string {
	out := [][2]string{{"net.ipv4.ip_forward", "1"}}
	for _, p := range slices.Concat(s.LocalPodCIDRs, s.RemotePodCIDRs) {
		if p.Addr().Is6() && !p.Addr().Is4In6() {
			out = append(out, [2]string{"net.ipv6.conf.all.forwarding", "1"})
			break
		}
	}
	if !strings.Contains(bridge, ".") && slices.ContainsFunc(s.LocalPodCIDRs, func(p netip.Prefix) bool { return p.Addr().Is6() && !p.Addr().Is4In6() }) {
		out = append(out, [2]string{"net.ipv6.conf." + bridge + ".accept_ra", "0"})
	}
	return out
}

func (d *Dataplane) syncSysctls(s mesh.DataplaneState) error {
	var errs []error
	for _, kv := range sysctlsFor(s, d.cfg.Bridge) {
		cur, err := d.cfg.System.Sysctl(kv[0])
		if err == nil && cur == kv[1] {
			continue
		}
		if err := d.cfg.System.SetSysctl(kv[0], kv[1]); err != nil {
			if errors.Is(err, syscall.EROFS) {
				// The agent's container sees /proc/sys read-only (it is
				// not privileged): forwarding is the node's to enable.
				err = fmt.Errorf("%w; enable it on the node (sysctl -w %s=%s), as every Kubernetes node needs", err, kv[0], kv[1])
			}
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err))
			continue
		}
		d.log.Info("set sysctl", "key", kv[0], "value", kv[1])
	}
	return errors.Join(errs...)
}

// routesFor builds the desired routes: one per remote prefix through the
// WireGuard interface, sourced from the gateway of the same family, and the
// fail-closed catch-alls.
func (d *Dataplane) routesFor(remote, gateways []netip.Prefix) []Route {
	out := d.failClosedRoutes()
	for _, p := range remote {
		r := Route{Dst: p.Masked(), Dev: d.cfg.WGInterface, Protocol: d.cfg.RouteProtocol}
		for _, gw := range gateways {
			if gw.Addr().Is4() == p.Addr().Is4() {
				r.Src = gw.Addr()
				break
			}
		}
		out = append(out, r)
	}
	return out
}

// syncRoutes adds missing routes, fixes our routes that differ, and removes
// our routes to prefixes no longer wanted. Routes without our protocol tag
// are never listed, so never changed.
func (d *Dataplane) syncRoutes(remote, gateways []netip.Prefix) error {
	sys := d.cfg.System
	have, err := sys.Routes(d.cfg.RouteProtocol)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	byKey := map[routeKey]Route{}
	for _, r := range have {
		byKey[r.key()] = r
	}
	want := d.routesFor(remote, gateways)
	wanted := map[routeKey]bool{}
	var errs []error
	for _, r := range want {
		wanted[r.key()] = true
		cur, ok := byKey[r.key()]
		switch {
		case !ok:
			if err := sys.AddRoute(r); err != nil {
				errs = append(errs, fmt.Errorf("add route %s %s dev %s: %w", r.Type, r.Dst, r.Dev, err))
				continue
			}
			d.log.Info("added route", "dst", r.Dst, "type", r.Type, "dev", r.Dev, "src", r.Src)
		case !cur.same(r) && r.Type == RouteUnreachable:
			// The metric is part of the kernel's route key: a replace
			// would add a second route, so delete the old one first.
			// Between the two another catch-all or the guard holds.
			if err := sys.DelRoute(cur); err != nil {
				errs = append(errs, fmt.Errorf("delete route %s %s: %w", cur.Type, cur.Dst, err))
				continue
			}
			if err := sys.AddRoute(r); err != nil {
				errs = append(errs, fmt.Errorf("add route %s %s: %w", r.Type, r.Dst, err))
				continue
			}
			d.log.Info("updated route", "dst", r.Dst, "type", r.Type, "metric", r.Metric)
		case !cur.same(r):
			if err := sys.ReplaceRoute(r); err != nil {
				errs = append(errs, fmt.Errorf("replace route %s dev %s: %w", r.Dst, r.Dev, err))
				continue
			}
			d.log.Info("updated route", "dst", r.Dst, "dev", r.Dev, "src", r.Src)
		}
	}
	for _, r := range have {
		if wanted[r.key()] {
			continue
		}
		if err := sys.DelRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s dev %s: %w", r.Dst, r.Dev, err))
			continue
		}
		d.log.Info("removed route", "dst", r.Dst, "type", r.Type, "dev", r.Dev)
	}
	return errors.Join(errs...)
}

// Uninstall removes what the dataplane put on the node: our routes
// (including the fail-closed catch-alls), our nftables tables and our rules
// in iptables' FORWARD chains, and the bridge (detaching any pods still on
// it). It is for taking wgmesh off a node for good; the agent never calls
// it on its own. Missing pieces are fine; every step is tried.
func (d *Dataplane) Uninstall(ctx context.Context) error {
	sys := d.cfg.System
	var errs []error
	have, err := sys.Routes(d.cfg.RouteProtocol)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range have {
		if err := sys.DelRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s %s: %w", r.Type, r.Dst, err))
		}
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := sys.RemoveFirewall(d.cfg.Table, d.cfg.GuardTable); err != nil {
		errs = append(errs, fmt.Errorf("remove firewall: %w", err))
	}
	if err := sys.DeleteLink(d.cfg.Bridge); err != nil {
		errs = append(errs, fmt.Errorf("delete bridge %s: %w", d.cfg.Bridge, err))
	}
	return errors.Join(errs...)
}

// Multi applies several dataplanes in order (e.g. the kernel dataplane, then
// the CNI config writer) and joins their errors; a failing one does not stop
// the next.
type Multi []mesh.Dataplane

// Apply implements mesh.Dataplane.
func (m Multi) Apply(ctx context.Context, s mesh.DataplaneState) error {
	var errs []error
	for _, dp := range m {
		if err := dp.Apply(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Func adapts a function to mesh.Dataplane.
type Func func(ctx context.Context, s mesh.DataplaneState) error

// Apply implements mesh.Dataplane.
func (f Func) Apply(ctx context.Context, s mesh.DataplaneState) error { return f(ctx, s) }
