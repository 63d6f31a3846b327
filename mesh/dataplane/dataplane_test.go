package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// fakeLink is an interface of the fake host.
type fakeLink struct {
	bridge bool
	mtu    int
	up     bool
	addrs  []netip.Prefix
}

// fakeSystem is an in-memory host. It records every mutating call so tests
// can assert that a converged host is left alone.
type fakeSystem struct {
	links    map[string]*fakeLink
	routes   []Route // all protocols
	sysctls  map[string]string
	firewall *Firewall
	guard    *Guard
	writes   []string
	failAdd  map[netip.Prefix]error // AddRoute errors by destination
}

func newFakeSystem() *fakeSystem {
	return &fakeSystem{
		links:   map[string]*fakeLink{"wgmesh0": {mtu: 1420}},
		sysctls: map[string]string{"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"},
	}
}

func (f *fakeSystem) write(format string, args ...any) {
	f.writes = append(f.writes, fmt.Sprintf(format, args...))
}

func (f *fakeSystem) EnsureBridge(name string, mtu int) error {
	l, ok := f.links[name]
	if !ok {
		l = &fakeLink{bridge: true, mtu: 1500}
		f.links[name] = l
		f.write("create bridge %s", name)
	}
	if !l.bridge {
		return ErrNotBridge
	}
	return f.setUp(name, l, mtu)
}

func (f *fakeSystem) setUp(name string, l *fakeLink, mtu int) error {
	if mtu > 0 && l.mtu != mtu {
		l.mtu = mtu
		f.write("mtu %s %d", name, mtu)
	}
	if !l.up {
		l.up = true
		f.write("up %s", name)
	}
	return nil
}

func (f *fakeSystem) EnsureLinkUp(name string, mtu int) error {
	l, ok := f.links[name]
	if !ok {
		return ErrNoLink
	}
	return f.setUp(name, l, mtu)
}

func (f *fakeSystem) Addrs(name string) ([]netip.Prefix, error) {
	l, ok := f.links[name]
	if !ok {
		return nil, ErrNoLink
	}
	return slices.Clone(l.addrs), nil
}

func (f *fakeSystem) AddAddr(name string, a netip.Prefix) error {
	f.links[name].addrs = append(f.links[name].addrs, a)
	f.write("addr add %s %s", name, a)
	return nil
}

func (f *fakeSystem) DelAddr(name string, a netip.Prefix) error {
	l := f.links[name]
	l.addrs = slices.DeleteFunc(l.addrs, func(p netip.Prefix) bool { return p == a })
	f.write("addr del %s %s", name, a)
	return nil
}

func (f *fakeSystem) Routes(protocol int) ([]Route, error) {
	var out []Route
	for _, r := range f.routes {
		if r.Protocol == protocol {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *fakeSystem) AddRoute(r Route) error {
	if err := f.failAdd[r.Dst]; err != nil {
		return err
	}
	// The kernel's key: destination and metric (unicast: 0).
	for _, x := range f.routes {
		if x.Dst == r.Dst && x.Metric == r.Metric {
			return ErrRouteConflict
		}
	}
	if r.Type == RouteUnreachable {
		f.routes = append(f.routes, r)
		f.write("route add unreachable %s metric %d", r.Dst, r.Metric)
		return nil
	}
	if _, ok := f.links[r.Dev]; !ok {
		return ErrNoLink
	}
	f.routes = append(f.routes, r)
	f.write("route add %s dev %s src %s", r.Dst, r.Dev, r.Src)
	return nil
}

func (f *fakeSystem) ReplaceRoute(r Route) error {
	f.routes = slices.DeleteFunc(f.routes, func(x Route) bool {
		return x.Dst == r.Dst && x.Protocol == r.Protocol && x.Type == r.Type
	})
	f.routes = append(f.routes, r)
	f.write("route replace %s dev %s src %s", r.Dst, r.Dev, r.Src)
	return nil
}

func (f *fakeSystem) DelRoute(r Route) error {
	f.routes = slices.DeleteFunc(f.routes, func(x Route) bool {
		return x.Dst == r.Dst && x.Protocol == r.Protocol && x.Type == r.Type && (r.Metric == 0 || x.Metric == r.Metric)
	})
	if r.Type == RouteUnreachable {
		f.write("route del unreachable %s", r.Dst)
		return nil
	}
	f.write("route del %s", r.Dst)
	return nil
}

func (f *fakeSystem) Sysctl(key string) (string, error) {
	v, ok := f.sysctls[key]
	if !ok {
		return "", errors.New("no such sysctl")
	}
	return v, nil
}

func (f *fakeSystem) SetSysctl(key, value string) error {
	f.sysctls[key] = value
	f.write("sysctl %s=%s", key, value)
	return nil
}

func (f *fakeSystem) ApplyFirewall(fw Firewall) error {
	if f.firewall != nil && cmp.Equal(*f.firewall, fw, cmpopts.EquateComparable(netip.Prefix{})) {
		return nil
	}
	f.firewall = &fw
	f.write("firewall %v", fw.LocalPodCIDRs)
	return nil
}

func (f *fakeSystem) ApplyGuard(g Guard) error {
	if f.guard != nil && cmp.Equal(*f.guard, g, cmpopts.EquateComparable(netip.Prefix{})) {
		return nil
	}
	f.guard = &g
	f.write("guard %v", g.ClusterCIDRs)
	return nil
}

func (f *fakeSystem) RemoveFirewall(tables ...string) error {
	for _, t := range tables {
		if f.firewall != nil && f.firewall.Table == t {
			f.firewall = nil
			f.write("remove table %s", t)
		}
		if f.guard != nil && f.guard.Table == t {
			f.guard = nil
			f.write("remove table %s", t)
		}
	}
	return nil
}

func (f *fakeSystem) DeleteLink(name string) error {
	if _, ok := f.links[name]; ok {
		delete(f.links, name)
		f.write("delete link %s", name)
	}
	return nil
}

// ours lists our unicast routes (the fail-closed ones are checked apart).
func (f *fakeSystem) ours() []Route {
	var out []Route
	for _, r := range f.routes {
		if r.Protocol == DefaultRouteProtocol && r.Type == RouteUnicast {
			out = append(out, r)
		}
	}
	return out
}

// catchAll is the fail-closed route of the default cluster range.
var catchAll = Route{Dst: netip.MustParsePrefix("10.244.0.0/16"), Type: RouteUnreachable, Protocol: DefaultRouteProtocol, Metric: FailClosedMetric}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

func newTestDataplane(t *testing.T, sys System) *Dataplane {
	t.Helper()
	dp, err := New(Config{WGInterface: "wgmesh0", System: sys})
	if err != nil {
		t.Fatal(err)
	}
	return dp
}

func TestApplyFromScratchThenIdempotent(t *testing.T) {
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	st := mesh.DataplaneState{
		LocalPodCIDRs:  pfx("10.244.1.0/24"),
		RemotePodCIDRs: pfx("10.244.2.0/24", "10.244.3.0/24"),
		MTU:            1420,
	}
	if err := dp.Apply(context.Background(), st); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	br := sys.links[DefaultBridge]
	if br == nil || !br.bridge || !br.up || br.mtu != 1420 {
		t.Fatalf("bridge = %+v, want an up bridge with mtu 1420", br)
	}
	if diff := cmp.Diff(pfx("10.244.1.1/24"), br.addrs, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("bridge addrs (-want +got):\n%s", diff)
	}
	if !sys.links["wgmesh0"].up {
		t.Error("wireguard link not up")
	}
	gw := netip.MustParseAddr("10.244.1.1")
	wantRoutes := []Route{
		catchAll,
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "wgmesh0", Src: gw, Protocol: DefaultRouteProtocol},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Dev: "wgmesh0", Src: gw, Protocol: DefaultRouteProtocol},
	}
	if diff := cmp.Diff(wantRoutes, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
	if sys.sysctls["net.ipv4.ip_forward"] != "1" {
		t.Error("ip_forward not set")
	}
	if sys.sysctls["net.ipv6.conf.all.forwarding"] != "0" {
		t.Error("ipv6 forwarding changed on an IPv4-only node")
	}
	if sys.firewall == nil || sys.firewall.Table != DefaultTable || sys.firewall.Bridge != DefaultBridge ||
		!slices.Equal(sys.firewall.ClusterCIDRs, DefaultClusterCIDRs) {
		t.Errorf("firewall = %+v", sys.firewall)
	}
	wantGuard := Guard{Table: DefaultGuardTable, WGInterface: "wgmesh0", Bridge: DefaultBridge, ClusterCIDRs: DefaultClusterCIDRs}
	if diff := cmp.Diff(&wantGuard, sys.guard, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("guard (-want +got):\n%s", diff)
	}

	sys.writes = nil
	if err := dp.Apply(context.Background(), st); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if len(sys.writes) != 0 {
		t.Errorf("second Apply changed a converged host: %v", sys.writes)
	}
}

func TestApplyRemovesOnlyOurStaleRoutes(t *testing.T) {
	sys := newFakeSystem()
	foreign := Route{Dst: netip.MustParsePrefix("10.244.9.0/24"), Dev: "eth0", Protocol: 4 /* static */}
	sys.routes = append(sys.routes, foreign)
	dp := newTestDataplane(t, sys)
	ctx := context.Background()
	st := mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24", "10.244.3.0/24")}
	if err := dp.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	st.RemotePodCIDRs = pfx("10.244.3.0/24")
	sys.writes = nil
	if err := dp.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if want := []string{"route del 10.244.2.0/24"}; !slices.Equal(sys.writes, want) {
		t.Errorf("writes = %v, want %v", sys.writes, want)
	}
	if !slices.Contains(sys.routes, foreign) {
		t.Error("foreign route was removed")
	}
}

func TestApplyRouteConflictLeavesForeignRouteAndAppliesTheRest(t *testing.T) {
	sys := newFakeSystem()
	foreign := Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "eth0", Protocol: 4}
	sys.routes = append(sys.routes, foreign)
	dp := newTestDataplane(t, sys)
	err := dp.Apply(context.Background(), mesh.DataplaneState{
		LocalPodCIDRs:  pfx("10.244.1.0/24"),
		RemotePodCIDRs: pfx("10.244.2.0/24", "10.244.3.0/24"),
	})
	if !errors.Is(err, ErrRouteConflict) {
		t.Fatalf("Apply error = %v, want ErrRouteConflict", err)
	}
	if !strings.Contains(err.Error(), "10.244.2.0/24") {
		t.Errorf("error does not name the prefix: %v", err)
	}
	if !slices.Contains(sys.routes, foreign) {
		t.Error("foreign route was touched")
	}
	got := sys.ours()
	if len(got) != 1 || got[0].Dst != netip.MustParsePrefix("10.244.3.0/24") {
		t.Errorf("our routes = %v, want only 10.244.3.0/24", got)
	}
	if sys.firewall == nil {
		t.Error("firewall skipped because of an unrelated route failure")
	}
}

func TestApplyPodCIDRChangeMovesGatewayAndRouteSources(t *testing.T) {
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	ctx := context.Background()
	// No local pod CIDR yet (Node not assigned one): routes have no source.
	if err := dp.Apply(ctx, mesh.DataplaneState{RemotePodCIDRs: pfx("10.244.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if r := sys.ours(); len(r) != 1 || r[0].Src.IsValid() {
		t.Fatalf("routes = %v, want one without source", r)
	}
	if len(sys.links[DefaultBridge].addrs) != 0 {
		t.Fatalf("bridge has addresses without a pod CIDR")
	}
	if err := dp.Apply(ctx, mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if r := sys.ours(); r[0].Src != netip.MustParseAddr("10.244.1.1") {
		t.Errorf("route source = %v, want 10.244.1.1", r[0].Src)
	}
	if err := dp.Apply(ctx, mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.7.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(pfx("10.244.7.1/24"), sys.links[DefaultBridge].addrs, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("bridge addrs after change (-want +got):\n%s", diff)
	}
	if r := sys.ours(); r[0].Src != netip.MustParseAddr("10.244.7.1") {
		t.Errorf("route source = %v, want 10.244.7.1", r[0].Src)
	}
}

// EnsureBridge is the bridge part of Apply alone, for harnesses that run
// the CNI plugin without the agent: it touches nothing but the bridge and
// forwarding, converges, and removes a stale gateway.
func TestEnsureBridge(t *testing.T) {
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	if err := dp.EnsureBridge(pfx("10.244.1.0/24", "fd00:10:244:1::/64"), 1400); err != nil {
		t.Fatal(err)
	}
	br := sys.links[DefaultBridge]
	if br == nil || !br.bridge || !br.up || br.mtu != 1400 {
		t.Fatalf("bridge %+v, want an up bridge with mtu 1400", br)
	}
	if diff := cmp.Diff(pfx("10.244.1.1/24", "fd00:10:244:1::1/64"), br.addrs, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("bridge addrs (-want +got):\n%s", diff)
	}
	wantSysctls := map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1", "net.ipv6.conf." + DefaultBridge + ".accept_ra": "0"}
	if diff := cmp.Diff(wantSysctls, sys.sysctls); diff != "" {
		t.Errorf("sysctls (-want +got):\n%s", diff)
	}
	if len(sys.routes) != 0 || sys.firewall != nil || sys.guard != nil {
		t.Errorf("EnsureBridge went beyond the bridge: routes %v, firewall %v, guard %v", sys.routes, sys.firewall, sys.guard)
	}
	sys.writes = nil
	if err := dp.EnsureBridge(pfx("10.244.1.0/24", "fd00:10:244:1::/64"), 1400); err != nil {
		t.Fatal(err)
	}
	if len(sys.writes) != 0 {
		t.Errorf("second EnsureBridge changed %v", sys.writes)
	}
	// The podCIDR changes: the old gateway goes.
	if err := dp.EnsureBridge(pfx("10.244.7.0/24"), 1400); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(pfx("10.244.7.1/24"), br.addrs, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("bridge addrs after change (-want +got):\n%s", diff)
	}

	foreign := newFakeSystem()
	foreign.links[DefaultBridge] = &fakeLink{mtu: 1500}
	if err := newTestDataplane(t, foreign).EnsureBridge(pfx("10.244.1.0/24"), 1400); !errors.Is(err, ErrNotBridge) {
		t.Errorf("EnsureBridge over a non-bridge = %v, want ErrNotBridge", err)
	}
	if err := newTestDataplane(t, newFakeSystem()).EnsureBridge(pfx("10.244.1.0/31"), 1400); !errors.Is(err, nodenet.ErrNoGateway) {
		t.Errorf("EnsureBridge of a /31 = %v, want ErrNoGateway", err)
	}
}

func TestApplyDualStack(t *testing.T) {
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	err := dp.Apply(context.Background(), mesh.DataplaneState{
		LocalPodCIDRs:  pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
		RemotePodCIDRs: pfx("10.244.2.0/24", "fd00:10:244:2::/64"),
		MTU:            1380,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sys.sysctls["net.ipv6.conf.all.forwarding"] != "1" {
		t.Error("ipv6 forwarding not enabled for IPv6 pod ranges")
	}
	if sys.sysctls["net.ipv6.conf."+DefaultBridge+".accept_ra"] != "0" {
		t.Error("the bridge still accepts router advertisements")
	}
	srcs := map[string]string{}
	for _, r := range sys.ours() {
		srcs[r.Dst.String()] = r.Src.String()
	}
	want := map[string]string{"10.244.2.0/24": "10.244.1.1", "fd00:10:244:2::/64": "fd00:10:244:1::1"}
	if diff := cmp.Diff(want, srcs); diff != "" {
		t.Errorf("route sources (-want +got):\n%s", diff)
	}
	if sys.links["wgmesh0"].mtu != 1380 || sys.links[DefaultBridge].mtu != 1380 {
		t.Errorf("mtu wg=%d bridge=%d, want 1380", sys.links["wgmesh0"].mtu, sys.links[DefaultBridge].mtu)
	}
}

func TestApplyReportsButDoesNotTouchForeignLinkWithBridgeName(t *testing.T) {
	sys := newFakeSystem()
	sys.links[DefaultBridge] = &fakeLink{mtu: 1500}
	dp := newTestDataplane(t, sys)
	err := dp.Apply(context.Background(), mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")})
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("error = %v, want ErrNotBridge", err)
	}
	if l := sys.links[DefaultBridge]; l.up || len(l.addrs) != 0 {
		t.Errorf("foreign link was changed: %+v", l)
	}
	if r := sys.ours(); len(r) != 1 {
		t.Errorf("routes not applied: %v", r)
	}
}

func TestApplyMissingWireGuardLink(t *testing.T) {
	sys := newFakeSystem()
	delete(sys.links, "wgmesh0")
	dp := newTestDataplane(t, sys)
	err := dp.Apply(context.Background(), mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")})
	if !errors.Is(err, ErrNoLink) {
		t.Fatalf("error = %v, want ErrNoLink", err)
	}
	if sys.links[DefaultBridge] == nil || sys.firewall == nil {
		t.Error("bridge or firewall not applied")
	}
}

func TestApplyZeroMTULeavesMTUs(t *testing.T) {
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	if err := dp.Apply(context.Background(), mesh.DataplaneState{}); err != nil {
		t.Fatal(err)
	}
	if sys.links["wgmesh0"].mtu != 1420 {
		t.Errorf("wg mtu changed to %d", sys.links["wgmesh0"].mtu)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{WGInterface: "wgmesh0"}, true},
		{"no wg interface", Config{}, false},
		{"same names", Config{WGInterface: "x", Bridge: "x"}, false},
		{"unmasked cluster cidr", Config{WGInterface: "wgmesh0", ClusterCIDRs: pfx("10.244.1.1/16")}, false},
		{"bad protocol", Config{WGInterface: "wgmesh0", RouteProtocol: 300}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.System = newFakeSystem()
			_, err := New(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New error = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestMultiAppliesAllAndJoinsErrors(t *testing.T) {
	var calls []string
	boom := errors.New("boom")
	m := Multi{
		Func(func(context.Context, mesh.DataplaneState) error { calls = append(calls, "a"); return boom }),
		Func(func(context.Context, mesh.DataplaneState) error { calls = append(calls, "b"); return nil }),
	}
	err := m.Apply(context.Background(), mesh.DataplaneState{})
	if !errors.Is(err, boom) {
		t.Errorf("error = %v, want boom", err)
	}
	if !slices.Equal(calls, []string{"a", "b"}) {
		t.Errorf("calls = %v", calls)
	}
}
