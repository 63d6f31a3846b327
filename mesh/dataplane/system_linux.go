package dataplane

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// NewSystem returns the System of the running kernel, acting in the
// network namespace of the calling process.
func NewSystem() System { return &linuxSystem{procSys: "/proc/sys", pinned: map[string]bool{}} }

type linuxSystem struct {
	procSys string

	mu sync.Mutex
	// pinned are the bridges whose MAC this System has set: setting it
	// again on every pass would flush the bridge's neighbour entries each
	// time (the kernel announces a MAC change even when it is the same).
	pinned map[string]bool
}

// dumpRetries bounds retries of netlink dumps interrupted by concurrent
// changes (NLM_F_DUMP_INTR).
const dumpRetries = 5

func retryDump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpRetries {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%s: %w", name, ErrNoLink)
		}
		return nil, err
	}
	return l, nil
}

func (s *linuxSystem) EnsureBridge(name string, mtu int) error {
	link, err := linkByName(name)
	created := false
	if errors.Is(err, ErrNoLink) {
		s.mu.Lock()
		delete(s.pinned, name) // gone: whoever makes it next decides
		s.mu.Unlock()
		la := netlink.NewLinkAttrs()
		la.Name = name
		if mtu > 0 {
			la.MTU = mtu
		}
		// A MAC set explicitly stays put (see System.EnsureBridge).
		if la.HardwareAddr, err = randomMAC(); err != nil {
			return err
		}
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge: %w", err)
		}
		created = err == nil
		link, err = linkByName(name)
	}
	if err != nil {
		return err
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("%s is a %s: %w", name, link.Type(), ErrNotBridge)
	}
	if err := s.pinMAC(link, created); err != nil {
		return err
	}
	return setUpWithMTU(link, mtu)
}

// pinMAC sets the MAC of a bridge found in place (made by an older agent,
// or by hand) to its current value once per System, which marks it set by
// the administrator so it no longer follows the ports.
func (s *linuxSystem) pinMAC(link netlink.Link, created bool) error {
	name := link.Attrs().Name
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pinned[name] {
		return nil
	}
	if mac := link.Attrs().HardwareAddr; !created && len(mac) == 6 && !bytes.Equal(mac, make([]byte, 6)) {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("pin MAC of bridge %s: %w", name, err)
		}
	}
	s.pinned[name] = true
	return nil
}

func randomMAC() (net.HardwareAddr, error) {
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, fmt.Errorf("bridge MAC: %w", err)
	}
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac, nil
}

func (s *linuxSystem) EnsureLinkUp(name string, mtu int) error {
	link, err := linkByName(name)
	if err != nil {
		return err
	}
	return setUpWithMTU(link, mtu)
}

func setUpWithMTU(link netlink.Link, mtu int) error {
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set mtu %d: %w", mtu, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	return nil
}

func (s *linuxSystem) Addrs(name string) ([]netip.Prefix, error) {
	link, err := linkByName(name)
	if err != nil {
		return nil, err
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE || a.IPNet == nil {
			continue
		}
		p, ok := nodenet.PrefixFromIPNet(*a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *linuxSystem) AddAddr(name string, p netip.Prefix) error {
	link, err := linkByName(name)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(p, false)}
	if p.Addr().Is6() {
		// No duplicate address detection: the gateway is ours by
		// construction, and a tentative address (DAD never finishes on a
		// bridge without carrier) cannot be a route's source.
		a.Flags = unix.IFA_F_NODAD
	}
	err = netlink.AddrAdd(link, a)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func (s *linuxSystem) DelAddr(name string, p netip.Prefix) error {
	link, err := linkByName(name)
	if err != nil {
		return err
	}
	err = netlink.AddrDel(link, &netlink.Addr{IPNet: ipNet(p, false)})
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

func (s *linuxSystem) Routes(protocol int) ([]Route, error) {
	filter := &netlink.Route{Protocol: netlink.RouteProtocol(protocol), Table: unix.RT_TABLE_MAIN}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	var out []Route
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := nodenet.PrefixFromIPNet(*r.Dst)
		if !ok {
			continue
		}
		dst = dst.Masked()
		var typ RouteType
		switch r.Type {
		case unix.RTN_UNICAST:
			typ = RouteUnicast
		case unix.RTN_UNREACHABLE:
			typ = RouteUnreachable
		default:
			continue // not a kind we make
		}
		rt := Route{Dst: dst, Type: typ, Protocol: int(r.Protocol), Metric: r.Priority}
		if typ == RouteUnicast {
			name, ok := names[r.LinkIndex]
			if !ok {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					name = l.Attrs().Name
				}
				names[r.LinkIndex] = name
			}
			rt.Dev = name
		}
		if a, ok := netip.AddrFromSlice(r.Src); ok && r.Src != nil {
			rt.Src = a.Unmap()
		}
		out = append(out, rt)
	}
	return out, nil
}

func (s *linuxSystem) netlinkRoute(r Route) (*netlink.Route, error) {
	if r.Type == RouteUnreachable {
		// No device: IPv4 shows it as `unreachable <dst>`, IPv6 puts it
		// on lo by itself.
		return &netlink.Route{
			Dst:      ipNet(r.Dst, true),
			Type:     unix.RTN_UNREACHABLE,
			Priority: r.Metric,
			Protocol: netlink.RouteProtocol(r.Protocol),
			Table:    unix.RT_TABLE_MAIN,
		}, nil
	}
	link, err := linkByName(r.Dev)
	if err != nil {
		return nil, err
	}
	nr := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(r.Dst, true),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  netlink.RouteProtocol(r.Protocol),
		Table:     unix.RT_TABLE_MAIN,
	}
	if r.Src.IsValid() {
		nr.Src = net.IP(r.Src.AsSlice())
	}
	return nr, nil
}

func (s *linuxSystem) AddRoute(r Route) error {
	nr, err := s.netlinkRoute(r)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(nr); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: %w", r.Dst, ErrRouteConflict)
		}
		return err
	}
	return nil
}

func (s *linuxSystem) ReplaceRoute(r Route) error {
	nr, err := s.netlinkRoute(r)
	if err != nil {
		return err
	}
	return netlink.RouteReplace(nr)
}

func (s *linuxSystem) DelRoute(r Route) error {
	// Delete by destination, table and protocol only: the kernel then
	// matches our route whatever device it points at now, and never a
	// route of another protocol. Scope "nowhere" is the kernel's wildcard;
	// the zero value (universe) would not match our link-scope route.
	//
	// The type and metric single out one of our routes where a unicast
	// and an unreachable one share a destination (IPv6 ignores the type;
	// the metrics differ). Metric 0, as in a route we built rather than
	// listed, is the kernel's wildcard.
	nr := &netlink.Route{
		Dst:      ipNet(r.Dst, true),
		Protocol: netlink.RouteProtocol(r.Protocol),
		Table:    unix.RT_TABLE_MAIN,
		Scope:    netlink.SCOPE_NOWHERE,
		Type:     unix.RTN_UNICAST,
		Priority: r.Metric,
	}
	if r.Type == RouteUnreachable {
		nr.Type = unix.RTN_UNREACHABLE
	}
	err := netlink.RouteDel(nr)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

func (s *linuxSystem) DeleteLink(name string) error {
	link, err := linkByName(name)
	if errors.Is(err, ErrNoLink) {
		return nil
	}
	if err != nil {
		return err
	}
	return netlink.LinkDel(link)
}

func (s *linuxSystem) sysctlPath(key string) (string, error) {
	if key == "" || strings.Contains(key, "..") || strings.ContainsAny(key, "/\x00") {
		return "", fmt.Errorf("bad sysctl key %q", key)
	}
	return filepath.Join(s.procSys, strings.ReplaceAll(key, ".", "/")), nil
}

func (s *linuxSystem) Sysctl(key string) (string, error) {
	p, err := s.sysctlPath(key)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (s *linuxSystem) SetSysctl(key, value string) error {
	p, err := s.sysctlPath(key)
	if err != nil {
		return err
	}
	return os.WriteFile(p, []byte(value), 0o644)
}

func ipNet(p netip.Prefix, masked bool) *net.IPNet {
	if masked {
		p = p.Masked()
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// LinkInfos lists the host's interfaces and the index of the interface
// carrying the (lowest-metric, IPv4 preferred) default route, 0 if none.
func LinkInfos() ([]LinkInfo, int, error) {
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		return nil, 0, fmt.Errorf("list links: %w", err)
	}
	var infos []LinkInfo
	for _, l := range links {
		a := l.Attrs()
		infos = append(infos, LinkInfo{
			Name:     a.Name,
			Index:    a.Index,
			MTU:      a.MTU,
			Up:       a.Flags&net.FlagUp != 0,
			Loopback: a.Flags&net.FlagLoopback != 0,
		})
	}
	defaultIndex := 0
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, 0, fmt.Errorf("list routes: %w", err)
		}
		best := -1
		for _, r := range routes {
			isDefault := r.Dst == nil
			if r.Dst != nil {
				ones, _ := r.Dst.Mask.Size()
				isDefault = ones == 0
			}
			if !isDefault {
				continue
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if idx != 0 && (best < 0 || r.Priority < best) {
				best = r.Priority
				defaultIndex = idx
			}
		}
		if defaultIndex != 0 {
			break
		}
	}
	return infos, defaultIndex, nil
}

// AutoMTU is ChooseMTU over the running kernel's interfaces.
func AutoMTU(exclude ...string) (int, error) {
	links, def, err := LinkInfos()
	if err != nil {
		return 0, err
	}
	return ChooseMTU(links, def, exclude...), nil
}

// linkByIndex is MTUDetector's one-link read.
func linkByIndex(index int) (LinkInfo, bool, error) {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return LinkInfo{}, false, nil
		}
		return LinkInfo{}, false, fmt.Errorf("read link %d: %w", index, err)
	}
	a := l.Attrs()
	return LinkInfo{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Loopback: a.Flags&net.FlagLoopback != 0}, true, nil
}
