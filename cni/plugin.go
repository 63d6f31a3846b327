package cni

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgmesh/wgmesh/ipam"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Plugin error codes beyond the spec's well-known ones are not used: every
// failure maps onto a spec code so runtimes can act on it.
const (
	codeExhausted = types.ErrTryAgainLater // clears when other pods are deleted
	codeNoGuard   = types.ErrTryAgainLater // clears when the agent starts
	codeNoBridge  = types.ErrTryAgainLater // clears on the agent's next pass
)

// Config configures a Plugin.
type Config struct {
	Network Network
	// OpenStore opens the IPAM store in dir; nil means ipam.OpenDisk.
	OpenStore func(dir string) (ipam.Store, error)
	// Stdout receives ADD results; nil means os.Stdout.
	Stdout io.Writer
	// Logger receives diagnostics (the runtime shows a plugin's stderr);
	// nil discards them.
	Logger *slog.Logger
}

// Plugin implements the CNI verbs. It holds no state between calls: each
// CNI invocation is a fresh process.
type Plugin struct {
	net       Network
	openStore func(string) (ipam.Store, error)
	stdout    io.Writer
	log       *slog.Logger
}

// New returns a Plugin. It does no I/O.
func New(cfg Config) *Plugin {
	p := &Plugin{net: cfg.Network, openStore: cfg.OpenStore, stdout: cfg.Stdout, log: cfg.Logger}
	if p.openStore == nil {
		p.openStore = func(dir string) (ipam.Store, error) { return ipam.OpenDisk(dir) }
	}
	if p.stdout == nil {
		p.stdout = os.Stdout
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// Funcs returns the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func cniErr(code uint, err error, format string, args ...any) *types.Error {
	e := types.NewError(code, fmt.Sprintf(format, args...), "")
	if err != nil {
		e.Msg += ": " + err.Error()
	}
	return e
}

func (p *Plugin) ipam(c *Conf) (*ipam.IPAM, ipam.Store, error) {
	store, err := p.openStore(c.StoreDir())
	if err != nil {
		return nil, nil, cniErr(types.ErrIOFailure, err, "open address store %s", c.StoreDir())
	}
	m, err := ipam.New(ipam.Config{Prefixes: c.PodCIDRs, Store: store})
	if err != nil {
		store.Close()
		return nil, nil, confErr("podCIDRs: %v", err)
	}
	return m, store, nil
}

func storeErr(err error, what string) *types.Error {
	if errors.Is(err, ipam.ErrExhausted) {
		return types.NewError(codeExhausted, err.Error(), "every address of the node's podCIDR is in use; delete pods or give the node a larger podCIDR")
	}
	return cniErr(types.ErrIOFailure, err, "%s", what)
}

func netnsErr(err error, path string) *types.Error {
	switch {
	case errors.Is(err, ErrNetNSNotFound):
		return cniErr(types.ErrUnknownContainer, nil, "network namespace %s does not exist (container gone?)", path)
	case errors.Is(err, ErrNotNetNS), errors.Is(err, ErrOwnNetNS):
		return cniErr(types.ErrInvalidEnvironmentVariables, err, "CNI_NETNS %s", path)
	}
	return cniErr(types.ErrInternal, err, "open network namespace %s", path)
}

// guardErr explains a failed GuardReady with code: ADD asks the runtime to
// retry, STATUS reports the plugin unavailable. An error other than
// ErrNoGuard (nftables unusable) refuses too: unknown means not safe.
func guardErr(code uint, err error) *types.Error {
	if errors.Is(err, ErrNoGuard) {
		return types.NewError(code, fmt.Sprintf("wgmesh agent has not installed its fail-closed guard (nftables table inet %s) on this node yet; retry when the agent is running", GuardTable), err.Error())
	}
	return cniErr(code, err, "cannot tell whether the wgmesh agent's fail-closed guard (nftables table inet %s) is installed; retry when the agent is running", GuardTable)
}

// bridgeErr explains a failed BridgeReady for ADD: the agent owns the
// bridge, so a missing, down or incomplete one asks the runtime to retry.
func bridgeErr(err error, bridge string) *types.Error {
	if errors.Is(err, ErrBridgeNotReady) {
		return types.NewError(codeNoBridge, fmt.Sprintf("wgmesh agent has not set up bridge %s for this node's pods yet; retry when the agent is running", bridge), err.Error())
	}
	return cniErr(types.ErrInternal, err, "inspect bridge %s", bridge)
}

func (p *Plugin) podSpec(c *Conf, args *skel.CmdArgs, leases []ipam.Lease) PodSpec {
	s := PodSpec{
		NetNS:    args.Netns,
		IfName:   args.IfName,
		HostVeth: HostVethName(args.ContainerID, args.IfName),
		Bridge:   c.Bridge,
		MTU:      c.MTU,
	}
	for _, l := range leases {
		s.Addrs = append(s.Addrs, l.Network())
		if !slices.ContainsFunc(s.Gateways, func(g netip.Addr) bool { return g.Is4() == l.Gateway.Is4() }) {
			s.Gateways = append(s.Gateways, l.Gateway)
		}
	}
	return s
}

// Add attaches the pod to the agent's bridge: address, veth, routes.
// Whatever it did is undone if a later step fails.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	log := p.log.With("container", args.ContainerID, "ifname", args.IfName)

	// Before anything is reserved: a pod whose namespace is gone needs nothing.
	if err := p.net.ValidateNetNS(args.Netns); err != nil {
		return netnsErr(err, args.Netns)
	}
	// Fail closed, before anything is created or reserved: the conflist
	// outlives a reboot but the guard does not, and without it (and the
	// unreachable routes the agent installs with it) this pod's traffic to
	// other nodes would follow the default route in plaintext.
	if err := p.net.GuardReady(); err != nil {
		return guardErr(codeNoGuard, err)
	}
	// The bridge is the agent's (see BridgeSpec); without it, or without
	// this podCIDR's gateway on it (the agent has not caught up with a
	// podCIDR change), the pod would have no way out.
	brIf, err := p.net.BridgeReady(BridgeSpec{Name: c.Bridge, Gateways: c.Gateways()})
	if err != nil {
		return bridgeErr(err, c.Bridge)
	}

	m, store, err := p.ipam(c)
	if err != nil {
		return err
	}
	defer store.Close()
	leases, err := m.Allocate(owner)
	if err != nil {
		return storeErr(err, "reserve address")
	}
	success := false
	defer func() {
		if success {
			return
		}
		// Only what this call reserved: an earlier ADD's address may be in
		// use by a running pod (a runtime repeating ADD).
		var fresh []netip.Addr
		for _, l := range leases {
			if l.New {
				fresh = append(fresh, l.Addr)
			}
		}
		if len(fresh) == 0 {
			return
		}
		if _, rerr := m.Release(owner, fresh...); rerr != nil {
			log.Error("rollback: release addresses", "addrs", fresh, "err", rerr)
		}
	}()

	spec := p.podSpec(c, args, leases)
	hostIf, podIf, err := p.net.AttachPod(spec)
	if err != nil {
		if errors.Is(err, ErrIfaceExists) {
			return cniErr(types.ErrInvalidEnvironmentVariables, nil, "interface %s already exists in network namespace %s", args.IfName, args.Netns)
		}
		if errors.Is(err, ErrNetNSNotFound) {
			return netnsErr(err, args.Netns)
		}
		return cniErr(types.ErrInternal, err, "attach pod")
	}
	defer func() {
		if !success {
			if derr := p.net.DetachPod(spec); derr != nil {
				log.Error("rollback: remove veth", "err", derr)
			}
		}
	}()

	result := buildResult(c, brIf, hostIf, podIf, leases)
	out, err := result.GetAsVersion(c.CNIVersion)
	if err != nil {
		return cniErr(types.ErrIncompatibleCNIVersion, err, "convert result")
	}
	if err := out.PrintTo(p.stdout); err != nil {
		return cniErr(types.ErrIOFailure, err, "write result")
	}
	success = true
	log.Debug("added", "addrs", spec.Addrs, "hostVeth", spec.HostVeth)
	return nil
}

// buildResult lays out the spec result: bridge, host veth and pod interface,
// the pod's addresses pointing at the pod interface, one default route per
// family. A prevResult from a plugin in front of us is kept, ours appended.
func buildResult(c *Conf, brIf, hostIf, podIf *current.Interface, leases []ipam.Lease) *current.Result {
	r := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: c.DNS}
	if c.PrevResult != nil {
		r.Interfaces = c.PrevResult.Interfaces
		r.IPs = c.PrevResult.IPs
		r.Routes = c.PrevResult.Routes
		if c.DNS.IsEmpty() {
			r.DNS = c.PrevResult.DNS
		}
	}
	base := len(r.Interfaces)
	r.Interfaces = append(r.Interfaces, brIf, hostIf, podIf)
	podIdx := base + 2
	for _, l := range leases {
		r.IPs = append(r.IPs, &current.IPConfig{
			Interface: current.Int(podIdx),
			Address:   prefixToIPNet(l.Network()),
			Gateway:   net.IP(l.Gateway.AsSlice()),
		})
	}
	seen := map[bool]bool{}
	for _, l := range leases {
		if seen[l.Addr.Is4()] {
			continue
		}
		seen[l.Addr.Is4()] = true
		dst := netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		if l.Addr.Is4() {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		r.Routes = append(r.Routes, &types.Route{Dst: prefixToIPNet(dst), GW: net.IP(l.Gateway.AsSlice())})
	}
	return r
}

func prefixToIPNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Del removes the attachment and frees its addresses. It succeeds when
// things are already gone (namespace, interface, reservation), and it works
// from a config whose podCIDRs went bad, so a pod can always be deleted.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	spec := PodSpec{NetNS: args.Netns, IfName: args.IfName, HostVeth: HostVethName(args.ContainerID, args.IfName), Bridge: c.Bridge}
	// The interface goes first: while it may still carry an address, that
	// address must stay reserved. If this fails the runtime retries DEL.
	if err := p.net.DetachPod(spec); err != nil {
		return cniErr(types.ErrInternal, err, "remove veth of %s", owner)
	}
	store, err := p.openStore(c.StoreDir())
	if err != nil {
		return cniErr(types.ErrIOFailure, err, "open address store %s", c.StoreDir())
	}
	defer store.Close()
	// Release by owner needs no pools, so broken podCIDRs do not matter here.
	freed, err := ipam.Release(store, owner)
	if err != nil {
		return cniErr(types.ErrIOFailure, err, "release addresses of %s", owner)
	}
	p.log.Debug("deleted", "owner", owner.String(), "freed", freed)
	return nil
}

// Check verifies the attachment against prevResult and the address store.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if c.PrevResult == nil {
		return confErr("CHECK needs prevResult (the result of the ADD)")
	}
	if err := p.net.ValidateNetNS(args.Netns); err != nil {
		return netnsErr(err, args.Netns)
	}
	// Our pod interface and the addresses that prevResult puts on it.
	podIdx := -1
	for i, itf := range c.PrevResult.Interfaces {
		if itf.Name == args.IfName && itf.Sandbox == args.Netns {
			podIdx = i
		}
	}
	if podIdx < 0 {
		return confErr("prevResult has no interface %s in %s", args.IfName, args.Netns)
	}
	var want []netip.Prefix
	for _, ipc := range c.PrevResult.IPs {
		if ipc.Interface == nil || *ipc.Interface != podIdx {
			continue
		}
		pr, ok := nodenet.PrefixFromIPNet(ipc.Address)
		if !ok {
			return confErr("prevResult address %v", ipc.Address)
		}
		want = append(want, pr)
	}
	if len(want) == 0 {
		return confErr("prevResult lists no address on %s", args.IfName)
	}

	owner := ipam.Owner{ContainerID: args.ContainerID, IfName: args.IfName}
	m, store, err := p.ipam(c)
	if err != nil {
		return err
	}
	defer store.Close()
	held, err := m.Lookup(owner)
	if err != nil {
		return storeErr(err, "look up reservations")
	}
	var heldAddrs []netip.Addr
	for _, l := range held {
		heldAddrs = append(heldAddrs, l.Addr)
	}
	for _, w := range want {
		if !slices.Contains(heldAddrs, w.Addr()) {
			return types.NewError(types.ErrInternal, fmt.Sprintf("address %s of %s is not reserved for it in %s (reservation lost)", w.Addr(), owner, c.StoreDir()), "")
		}
	}
	for _, a := range heldAddrs {
		if !slices.ContainsFunc(want, func(w netip.Prefix) bool { return w.Addr() == a }) {
			return types.NewError(types.ErrInternal, fmt.Sprintf("%s holds address %s that its interface does not carry (left by a failed ADD?)", owner, a), "")
		}
	}

	bridge := BridgeSpec{Name: c.Bridge, Gateways: c.Gateways()}
	if _, err := p.net.BridgeReady(bridge); err != nil {
		return cniErr(types.ErrInternal, err, "bridge %s", c.Bridge)
	}
	spec := p.podSpec(c, args, held)
	spec.Addrs = want
	if err := p.net.CheckPod(spec); err != nil {
		return cniErr(types.ErrInternal, err, "check %s", owner)
	}
	return nil
}

// Status reports whether ADD can work now: the node has a podCIDR, the
// agent's fail-closed guard is installed, the bridge is up with its gateway,
// the store is usable and has room.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := ParseConf(args.StdinData)
	if isNoPodCIDRs(err) {
		return types.NewError(types.ErrPluginNotAvailable, "wgmesh is not ready: the node has no podCIDR yet", "")
	}
	if err != nil {
		return err
	}
	if err := p.net.GuardReady(); err != nil {
		return guardErr(types.ErrPluginNotAvailable, err)
	}
	if _, err := p.net.BridgeReady(BridgeSpec{Name: c.Bridge, Gateways: c.Gateways()}); err != nil {
		return cniErr(types.ErrPluginNotAvailable, err, "wgmesh is not ready: bridge %s", c.Bridge)
	}
	m, store, err := p.ipam(c)
	if err != nil {
		return cniErr(types.ErrPluginNotAvailable, err, "wgmesh is not ready")
	}
	defer store.Close()
	if err := m.Available(); err != nil {
		return cniErr(types.ErrPluginNotAvailable, err, "wgmesh cannot add pods")
	}
	return nil
}

// GC frees every reservation, and removes every host veth on our bridge,
// that belongs to no attachment in cni.dev/valid-attachments. It carries on
// past errors and reports them all.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	if c.ValidAttachments == nil {
		// An empty list means "nothing is valid"; a missing one is a broken
		// request, and reading it as empty would tear down every pod.
		return confErr("GC needs cni.dev/valid-attachments (an empty list if no attachment is valid)")
	}
	valid := map[ipam.Owner]bool{}
	veths := map[string]bool{}
	for _, a := range c.ValidAttachments {
		valid[ipam.Owner{ContainerID: a.ContainerID, IfName: a.IfName}] = true
		veths[HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []error
	removed, err := p.net.SweepVeths(c.Bridge, veths)
	if err != nil {
		errs = append(errs, fmt.Errorf("remove stale veths: %w", err))
	}
	store, err := p.openStore(c.StoreDir())
	if err != nil {
		errs = append(errs, fmt.Errorf("open address store %s: %w", c.StoreDir(), err))
	} else {
		defer store.Close()
		// By owner, without pools: broken podCIDRs cannot stop the cleanup.
		freed, err := ipam.GC(store, func(o ipam.Owner) bool { return valid[o] })
		if err != nil {
			errs = append(errs, fmt.Errorf("free stale addresses: %w", err))
		}
		p.log.Info("gc", "freed", len(freed), "vethsRemoved", removed)
	}
	if err := errors.Join(errs...); err != nil {
		return cniErr(types.ErrIOFailure, err, "gc")
	}
	return nil
}
