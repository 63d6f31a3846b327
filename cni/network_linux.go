package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Netlink is the Network of a real Linux node. The plugin process runs in
// the node's network namespace; pod namespaces are entered by path.
type Netlink struct {
	Logger *slog.Logger
}

var _ Network = (*Netlink)(nil)

func (n *Netlink) log() *slog.Logger {
	if n.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Logger
}

// isNotFound reports a link that is not there: never was, or vanished
// between lookup and use (ENODEV), as a host veth does while the kernel
// tears down its peer's dying namespace.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}

// delLink deletes the named link of the current namespace; a link that is
// gone, or goes while we delete it, is no error. (ip.DelLinkByName reports
// the second case as an unwrappable error.)
func delLink(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if err == nil {
		err = netlink.LinkDel(l)
	}
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (n *Netlink) ValidateNetNS(path string) error {
	if path == "" {
		return fmt.Errorf("empty path: %w", ErrNetNSNotFound)
	}
	if err := ns.IsNSorErr(path); err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return fmt.Errorf("%s: %w", path, ErrNetNSNotFound)
		}
		return fmt.Errorf("%s: %w: %v", path, ErrNotNetNS, err)
	}
	var theirs, ours unix.Stat_t
	if err := unix.Stat(path, &theirs); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &ours); err != nil {
		return fmt.Errorf("own network namespace: %w", err)
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return fmt.Errorf("%s %w", path, ErrOwnNetNS)
	}
	return nil
}

func bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, err
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%s exists but is a %s, not a bridge", name, l.Type())
	}
	return br, nil
}

func addrFamily(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// ensureAddr adds p to link unless it is there with the same length. Other
// addresses are left alone: they may be the agent's.
func ensureAddr(link netlink.Link, p netip.Prefix) error {
	addrs, err := netlinksafe.AddrList(link, addrFamily(p.Addr()))
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	if hasAddr(addrs, p) {
		return nil
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		// Usable at once: duplicate address detection would hold it
		// "tentative" for a second, and nothing else owns this address.
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, a); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

func hasAddr(addrs []netlink.Addr, p netip.Prefix) bool {
	for _, a := range addrs {
		if got, ok := nodenet.PrefixFromIPNet(*a.IPNet); ok && got == p {
			return true
		}
	}
	return false
}

func ipNet(p netip.Prefix) *net.IPNet {
	n := prefixToIPNet(p)
	return &n
}

// GuardReady dumps the inet tables of the calling thread's namespace (the
// node's: the plugin runs there) and looks for GuardTable. One netlink
// round trip; nothing is changed.
func (n *Netlink) GuardReady() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == GuardTable {
			return nil
		}
	}
	return fmt.Errorf("no nftables table inet %s: %w", GuardTable, ErrNoGuard)
}

func (n *Netlink) BridgeReady(b BridgeSpec) (*current.Interface, error) {
	br, err := bridgeByName(b.Name)
	if isNotFound(err) {
		return nil, fmt.Errorf("%s does not exist: %w", b.Name, ErrBridgeNotReady)
	}
	if err != nil {
		return nil, err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("%s is down: %w", b.Name, ErrBridgeNotReady)
	}
	for _, gw := range b.Gateways {
		addrs, err := netlinksafe.AddrList(br, addrFamily(gw.Addr()))
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", b.Name, err)
		}
		if !hasAddr(addrs, gw) {
			return nil, fmt.Errorf("%s lacks gateway address %s: %w", b.Name, gw, ErrBridgeNotReady)
		}
	}
	return &current.Interface{Name: br.Attrs().Name, Mac: br.Attrs().HardwareAddr.String()}, nil
}

func (n *Netlink) AttachPod(s PodSpec) (host, pod *current.Interface, err error) {
	podNS, err := ns.GetNS(s.NetNS)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return nil, nil, fmt.Errorf("%s: %w", s.NetNS, ErrNetNSNotFound)
		}
		return nil, nil, err
	}
	defer podNS.Close()
	br, err := bridgeByName(s.Bridge)
	if err != nil {
		return nil, nil, err
	}

	err = podNS.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(s.IfName)
		switch {
		case err == nil:
			return fmt.Errorf("%s in %s: %w", s.IfName, s.NetNS, ErrIfaceExists)
		case isNotFound(err):
			return nil
		default:
			return err
		}
	})
	if err != nil {
		return nil, nil, err
	}
	// The pod does not have the interface, so a host end of this name is a
	// leftover of an earlier ADD of this very attachment that died midway.
	if stale, err := netlinksafe.LinkByName(s.HostVeth); err == nil {
		n.log().Warn("removing leftover host veth", "name", s.HostVeth)
		if err := netlink.LinkDel(stale); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("remove leftover %s: %w", s.HostVeth, err)
		}
	}

	pod = &current.Interface{Sandbox: s.NetNS, Mtu: s.MTU}
	created := false
	defer func() {
		if err != nil && created {
			// Deleting one end deletes the pair.
			if derr := delLink(s.HostVeth); derr != nil {
				n.log().Error("rollback: delete veth", "name", s.HostVeth, "err", derr)
			}
		}
	}()
	err = podNS.Do(func(hostNS ns.NetNS) error {
		_, podVeth, err := ip.SetupVethWithName(s.IfName, s.HostVeth, s.MTU, "", hostNS)
		if err != nil {
			if errors.Is(err, syscall.EEXIST) || strings.Contains(err.Error(), "already exists") {
				return fmt.Errorf("%s: %w (%v)", s.IfName, ErrIfaceExists, err)
			}
			return fmt.Errorf("create veth pair: %w", err)
		}
		created = true
		pod.Name, pod.Mac = podVeth.Name, podVeth.HardwareAddr.String()
		link, err := netlinksafe.LinkByName(s.IfName)
		if err != nil {
			return err
		}
		for _, a := range s.Addrs {
			if err := ensureAddr(link, a); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("bring up %s: %w", s.IfName, err)
		}
		for _, gw := range s.Gateways {
			r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice()), Family: addrFamily(gw)}
			if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("add default route via %s: %w", gw, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}

	hostLink, err := netlinksafe.LinkByName(s.HostVeth)
	if err != nil {
		return nil, nil, fmt.Errorf("find host veth %s: %w", s.HostVeth, err)
	}
	if err = netlink.LinkSetMaster(hostLink, br); err != nil {
		return nil, nil, fmt.Errorf("plug %s into %s: %w", s.HostVeth, s.Bridge, err)
	}
	// Hairpin: a pod reaching a Service that load-balances back to itself
	// sends the packet out of its port and must get it back on the same port.
	if err = netlink.LinkSetHairpin(hostLink, true); err != nil {
		return nil, nil, fmt.Errorf("hairpin on %s: %w", s.HostVeth, err)
	}
	host = &current.Interface{Name: s.HostVeth, Mac: hostLink.Attrs().HardwareAddr.String()}
	return host, pod, nil
}

func (n *Netlink) DetachPod(s PodSpec) error {
	var errs []error
	if s.NetNS != "" {
		err := ns.WithNetNSPath(s.NetNS, func(ns.NetNS) error {
			return delLink(s.IfName)
		})
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case err == nil, errors.As(err, &notExist):
		case errors.As(err, &notNS):
			// Not a namespace (any more): nothing of ours can be in it.
			n.log().Warn("DEL: netns path is not a network namespace", "netns", s.NetNS, "err", err)
		default:
			errs = append(errs, fmt.Errorf("delete %s in %s: %w", s.IfName, s.NetNS, err))
		}
	}
	// Normally gone with its peer; still here when the pod end was never
	// created in the namespace or the namespace was swapped.
	if err := delLink(s.HostVeth); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (n *Netlink) CheckPod(s PodSpec) error {
	var peerIndex int
	err := ns.WithNetNSPath(s.NetNS, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(s.IfName)
		if err != nil {
			return fmt.Errorf("interface %s: %w", s.IfName, err)
		}
		if _, ok := link.(*netlink.Veth); !ok {
			return fmt.Errorf("%s is a %s, not a veth", s.IfName, link.Type())
		}
		if link.Attrs().MTU != s.MTU {
			return fmt.Errorf("%s has MTU %d, want %d", s.IfName, link.Attrs().MTU, s.MTU)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s is down", s.IfName)
		}
		peerIndex = link.Attrs().ParentIndex
		for _, a := range s.Addrs {
			addrs, err := netlinksafe.AddrList(link, addrFamily(a.Addr()))
			if err != nil {
				return err
			}
			if !hasAddr(addrs, a) {
				return fmt.Errorf("%s lacks address %s", s.IfName, a)
			}
		}
		for _, gw := range s.Gateways {
			routes, err := netlinksafe.RouteList(link, addrFamily(gw))
			if err != nil {
				return err
			}
			found := false
			for _, r := range routes {
				isDefault := r.Dst == nil || (r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask))
				if isDefault && r.Gw.Equal(net.IP(gw.AsSlice())) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%s has no default route via %s", s.IfName, gw)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	host, err := netlinksafe.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", s.HostVeth, err)
	}
	br, err := bridgeByName(s.Bridge)
	if err != nil {
		return err
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not plugged into %s", s.HostVeth, s.Bridge)
	}
	if peerIndex != 0 && host.Attrs().Index != peerIndex {
		return fmt.Errorf("%s's peer is not %s", s.IfName, s.HostVeth)
	}
	pi, err := netlinksafe.LinkGetProtinfo(host)
	if err != nil {
		return fmt.Errorf("bridge port %s: %w", s.HostVeth, err)
	}
	if !pi.Hairpin {
		return fmt.Errorf("hairpin mode is off on %s", s.HostVeth)
	}
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func (n *Netlink) SweepVeths(bridge string, keep map[string]bool) ([]string, error) {
	br, err := bridgeByName(bridge)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if _, isVeth := l.(*netlink.Veth); !isVeth || a.MasterIndex != br.Attrs().Index || !IsHostVethName(a.Name) || keep[a.Name] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", a.Name, err))
			continue
		}
		removed = append(removed, a.Name)
	}
	return removed, errors.Join(errs...)
}
