package dataplane

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/wgmesh/wgmesh/mesh"
)

func TestPrepareInstallsCatchAllAndGuardOnly(t *testing.T) {
	sys := newFakeSystem()
	// What a previous run left: a route to a peer and our main table.
	prev := Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Dev: "wgmesh0", Src: netip.MustParseAddr("10.244.1.1"), Protocol: DefaultRouteProtocol}
	sys.routes = append(sys.routes, prev)
	sys.firewall = &Firewall{Table: DefaultTable, LocalPodCIDRs: pfx("10.244.1.0/24")}
	dp, err := New(Config{WGInterface: "wgmesh0", ClusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), System: sys})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []Route{
		prev,
		{Dst: netip.MustParsePrefix("10.244.0.0/16"), Type: RouteUnreachable, Protocol: DefaultRouteProtocol, Metric: FailClosedMetric},
		{Dst: netip.MustParsePrefix("fd00:10:244::/56"), Type: RouteUnreachable, Protocol: DefaultRouteProtocol, Metric: FailClosedMetric},
	}
	if diff := cmp.Diff(want, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes after Prepare (-want +got):\n%s", diff)
	}
	if sys.guard == nil || sys.guard.Table != DefaultGuardTable || sys.guard.WGInterface != "wgmesh0" ||
		sys.guard.Bridge != DefaultBridge || len(sys.guard.ClusterCIDRs) != 2 {
		t.Errorf("guard = %+v", sys.guard)
	}
	// The main table of the previous run is left for the first Apply.
	if sys.firewall == nil || len(sys.firewall.LocalPodCIDRs) != 1 {
		t.Errorf("Prepare touched the main table: %+v", sys.firewall)
	}
	if _, ok := sys.links[DefaultBridge]; ok {
		t.Error("Prepare created the bridge")
	}

	sys.writes = nil
	if err := dp.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(sys.writes) != 0 {
		t.Errorf("second Prepare changed a prepared host: %v", sys.writes)
	}
}

func TestPrepareFixesOurCatchAllWithAnOldMetric(t *testing.T) {
	sys := newFakeSystem()
	stale := catchAll
	stale.Metric = 1000
	sys.routes = append(sys.routes, stale)
	dp := newTestDataplane(t, sys)
	if err := dp.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Route{catchAll}, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

func TestPrepareReportsAForeignRouteInTheWayButInstallsTheGuard(t *testing.T) {
	sys := newFakeSystem()
	sys.failAdd = map[netip.Prefix]error{netip.MustParsePrefix("10.244.0.0/16"): ErrRouteConflict}
	dp := newTestDataplane(t, sys)
	err := dp.Prepare(context.Background())
	if !errors.Is(err, ErrRouteConflict) {
		t.Fatalf("Prepare error = %v, want ErrRouteConflict", err)
	}
	if sys.guard == nil {
		t.Error("guard not installed after a route failure")
	}
}

func TestApplyKeepsCatchAllBesideSamePrefixRoute(t *testing.T) {
	// A remote node's pod range equal to the cluster range: both routes
	// exist, the unicast one wins by its lower metric.
	sys := newFakeSystem()
	dp := newTestDataplane(t, sys)
	ctx := context.Background()
	st := mesh.DataplaneState{RemotePodCIDRs: pfx("10.244.0.0/16")}
	if err := dp.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if len(sys.routes) != 2 || !slices.Contains(sys.routes, catchAll) {
		t.Fatalf("routes = %v, want the catch-all and the peer route", sys.routes)
	}
	sys.writes = nil
	if err := dp.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if len(sys.writes) != 0 {
		t.Errorf("converged Apply wrote %v", sys.writes)
	}
	// The peer leaves (say its key went bad): only its route goes.
	if err := dp.Apply(ctx, mesh.DataplaneState{}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Route{catchAll}, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

func TestApplyMovesCatchAllWithClusterCIDRs(t *testing.T) {
	sys := newFakeSystem()
	ctx := context.Background()
	dp := newTestDataplane(t, sys)
	if err := dp.Apply(ctx, mesh.DataplaneState{}); err != nil {
		t.Fatal(err)
	}
	dp2, err := New(Config{WGInterface: "wgmesh0", ClusterCIDRs: pfx("10.32.0.0/12"), System: sys})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp2.Apply(ctx, mesh.DataplaneState{}); err != nil {
		t.Fatal(err)
	}
	want := []Route{{Dst: netip.MustParsePrefix("10.32.0.0/12"), Type: RouteUnreachable, Protocol: DefaultRouteProtocol, Metric: FailClosedMetric}}
	if diff := cmp.Diff(want, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pfx("10.32.0.0/12"), sys.guard.ClusterCIDRs, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
		t.Errorf("guard cidrs (-want +got):\n%s", diff)
	}
}

func TestApplyInstallsGuardEvenWhenTheRestFails(t *testing.T) {
	sys := newFakeSystem()
	sys.links[DefaultBridge] = &fakeLink{mtu: 1500} // foreign, not a bridge
	delete(sys.links, "wgmesh0")
	dp := newTestDataplane(t, sys)
	err := dp.Apply(context.Background(), mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")})
	if !errors.Is(err, ErrNotBridge) || !errors.Is(err, ErrNoLink) {
		t.Fatalf("error = %v, want ErrNotBridge and ErrNoLink", err)
	}
	if sys.guard == nil || !slices.Contains(sys.routes, catchAll) {
		t.Errorf("guard %v / catch-all %v missing after failures", sys.guard, sys.routes)
	}
}

func TestUninstallRemovesOnlyOurs(t *testing.T) {
	sys := newFakeSystem()
	foreign := Route{Dst: netip.MustParsePrefix("10.244.9.0/24"), Dev: "eth0", Protocol: 4}
	sys.routes = append(sys.routes, foreign)
	dp := newTestDataplane(t, sys)
	ctx := context.Background()
	if err := dp.Apply(ctx, mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := dp.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Route{foreign}, sys.routes, cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("routes after Uninstall (-want +got):\n%s", diff)
	}
	if sys.firewall != nil || sys.guard != nil {
		t.Errorf("tables left: firewall %v guard %v", sys.firewall, sys.guard)
	}
	if _, ok := sys.links[DefaultBridge]; ok {
		t.Error("bridge left")
	}
	if _, ok := sys.links["wgmesh0"]; !ok {
		t.Error("Uninstall deleted the WireGuard link, which is the device's to remove")
	}
	sys.writes = nil
	if err := dp.Uninstall(ctx); err != nil || len(sys.writes) != 0 {
		t.Errorf("second Uninstall: err %v, writes %v", err, sys.writes)
	}
}

func TestNewRejectsSameTableNames(t *testing.T) {
	if _, err := New(Config{WGInterface: "wg", Table: "x", GuardTable: "x", System: newFakeSystem()}); err == nil {
		t.Error("New accepted one table name for both tables")
	}
}
