package dataplane

import (
	"context"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/wgmesh/wgmesh/mesh"
)

// TestTunnelAddrsFor: the WireGuard interface carries the network address
// of every local pod prefix as a host address, /32 and /128 (for IPv6 the
// subnet-router anycast address; checked on the real kernel by
// integration/e2e TestDualStack: masquerade into the mesh picks it and the
// replies are delivered to it).
func TestTunnelAddrsFor(t *testing.T) {
	tests := []struct {
		name  string
		local []netip.Prefix
		want  []netip.Prefix
	}{
		{"none", nil, nil},
		{"ipv4", pfx("10.244.1.0/24"), pfx("10.244.1.0/32")},
		{"ipv6", pfx("fd00:10:244:1::/64"), pfx("fd00:10:244:1::/128")},
		{"dual-stack", pfx("10.244.1.0/24", "fd00:10:244:1::/64"), pfx("10.244.1.0/32", "fd00:10:244:1::/128")},
		{"host bits ignored", []netip.Prefix{netip.MustParsePrefix("fd00:10:244:1::5/64")}, pfx("fd00:10:244:1::/128")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tunnelAddrsFor(tt.local), cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
				t.Errorf("tunnelAddrsFor (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSysctlsFor: IPv6 forwarding (and no router advertisements on the
// bridge) exactly when the node has IPv6 pod ranges, local or remote.
func TestSysctlsFor(t *testing.T) {
	v4 := [2]string{"net.ipv4.ip_forward", "1"}
	v6 := [2]string{"net.ipv6.conf.all.forwarding", "1"}
	noRA := [2]string{"net.ipv6.conf.wgmesh-br0.accept_ra", "0"}
	tests := []struct {
		name   string
		s      mesh.DataplaneState
		bridge string
		want   [][2]string
	}{
		{"ipv4 only", mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24")}, "wgmesh-br0", [][2]string{v4}},
		{"dual-stack", mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24", "fd00:10:244:1::/64"), RemotePodCIDRs: pfx("fd00:10:244:2::/64")}, "wgmesh-br0", [][2]string{v4, v6, noRA}},
		{"ipv6 only remote (no local IPv6 yet)", mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("fd00:10:244:2::/64")}, "wgmesh-br0", [][2]string{v4, v6}},
		{"ipv6 single-stack", mesh.DataplaneState{LocalPodCIDRs: pfx("fd00:10:244:1::/64")}, "wgmesh-br0", [][2]string{v4, v6, noRA}},
		{"bridge name with a dot", mesh.DataplaneState{LocalPodCIDRs: pfx("fd00:10:244:1::/64")}, "br.1", [][2]string{v4, v6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, sysctlsFor(tt.s, tt.bridge)); diff != "" {
				t.Errorf("sysctlsFor (-want +got):\n%s", diff)
			}
		})
	}
}

// TestApplyDualStackFailClosedAndTunnel: with both families in
// cluster-cidrs, Apply keeps an unreachable catch-all and guard drops per
// family, and gives the tunnel one address of each family.
func TestApplyDualStackFailClosedAndTunnel(t *testing.T) {
	sys := newFakeSystem()
	dp, err := New(Config{WGInterface: "wgmesh0", ClusterCIDRs: pfx("10.244.0.0/16", "fd00:10:244::/56"), System: sys})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(context.Background(), mesh.DataplaneState{
		LocalPodCIDRs:  pfx("10.244.1.0/24", "fd00:10:244:1::/64"),
		RemotePodCIDRs: pfx("10.244.2.0/24", "fd00:10:244:2::/64"),
		MTU:            1420,
	}); err != nil {
		t.Fatal(err)
	}
	var unreachable []netip.Prefix
	for _, r := range sys.routes {
		if r.Type == RouteUnreachable && r.Protocol == DefaultRouteProtocol && r.Metric == FailClosedMetric {
			unreachable = append(unreachable, r.Dst)
		}
	}
	eq := cmpopts.EquateComparable(netip.Prefix{})
	if diff := cmp.Diff(pfx("10.244.0.0/16", "fd00:10:244::/56"), unreachable, eq, cmpopts.SortSlices(func(a, b netip.Prefix) bool { return a.String() < b.String() })); diff != "" {
		t.Errorf("unreachable catch-alls (-want +got):\n%s", diff)
	}
	if sys.guard == nil {
		t.Fatal("no guard")
	}
	var guarded []string
	for _, r := range guardRules(*sys.guard) {
		if r.Dst.IsValid() {
			guarded = append(guarded, "dst "+r.Dst.String())
		}
		if r.Src.IsValid() {
			guarded = append(guarded, "src "+r.Src.String())
		}
	}
	wantGuard := []string{"dst 10.244.0.0/16", "src 10.244.0.0/16", "dst fd00:10:244::/56", "src fd00:10:244::/56"}
	if diff := cmp.Diff(wantGuard, guarded); diff != "" {
		t.Errorf("guard drops (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pfx("10.244.1.0/32", "fd00:10:244:1::/128"), sys.links["wgmesh0"].addrs, eq); diff != "" {
		t.Errorf("tunnel addresses (-want +got):\n%s", diff)
	}
}
