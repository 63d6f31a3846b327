package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
)

// TestDualStack runs one dual-stack lab on a mixed underlay
// (lab.UpOptions.IPv6Underlay): node1 publishes an IPv4 endpoint, node2 an
// IPv6 one, node3 has no IPv4 underlay at all. Every node has an IPv4 and
// an IPv6 podCIDR, every pod an address of each family.
func TestDualStack(t *testing.T) {
	l := upLab(t, "d", lab.UpOptions{Nodes: 3, Pods: 2, DualStack: true, IPv6Underlay: true}, 5*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	t.Run("PeersCarryBothFamilies", func(t *testing.T) { testDualPeers(t, ctx, l) })
	t.Run("PingMatrixIPv4", func(t *testing.T) { requireMatrixOf(t, func() lab.Matrix { return l.PingMatrix(ctx, 5) }) })
	t.Run("PingMatrixIPv6", func(t *testing.T) { requireMatrixOf(t, func() lab.Matrix { return l.PingMatrix6(ctx, 5) }) })
	t.Run("EncryptedOnTheWireBothFamilies", func(t *testing.T) { testDualWire(t, ctx, l) })
	t.Run("MasqueradeIntoMeshUsesTunnelAddress", func(t *testing.T) { testTunnelMasquerade6(t, ctx, l) })
	t.Run("NetworkPolicyIPv6IPBlock", func(t *testing.T) { testPolicyIPv6(t, ctx, l) })
}

// testDualPeers: every node has every other node as a peer whose allowed
// IPs are exactly its two podCIDRs, each routed through the tunnel, and the
// IPv6-only node is reached at its IPv6 endpoint (the only way it can be).
func testDualPeers(t *testing.T, ctx context.Context, l *lab.Lab) {
	st := l.State()
	byCIDR := map[string]*lab.Node{}
	var v6only *lab.Node
	for _, n := range st.Nodes {
		byCIDR[n.PodCIDR] = n
		if n.Underlay == lab.UnderlayIPv6Only {
			v6only = n
		}
	}
	if v6only == nil {
		t.Fatal("the lab has no IPv6-only node")
	}
	for _, name := range st.NodeNames() {
		peers, err := wgPeers(ctx, l, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(peers) != len(st.Nodes)-1 {
			t.Errorf("%s has %d peers, want %d", name, len(peers), len(st.Nodes)-1)
		}
		for _, p := range peers {
			var other *lab.Node
			for _, a := range p.AllowedIPs {
				if n, ok := byCIDR[a]; ok {
					other = n
				}
			}
			if other == nil {
				t.Errorf("%s: peer %s with allowed IPs %v belongs to no node", name, p.PublicKey, p.AllowedIPs)
				continue
			}
			got, want := slices.Sorted(slices.Values(p.AllowedIPs)), slices.Sorted(slices.Values(other.PodCIDRs()))
			if !slices.Equal(got, want) {
				t.Errorf("%s: peer %s allowed IPs %s, want %s", name, other.Name, got, want)
			}
			for _, c := range other.PodCIDRs() {
				if !hasRoute(t, ctx, l, name, c) {
					t.Errorf("%s: no route to %s of %s", name, c, other.Name)
				}
			}
			if other == v6only {
				want := fmt.Sprintf("[%s]:%d", other.UnderlayIPv6, listenPort)
				if p.Endpoint != want {
					t.Errorf("%s: endpoint of IPv6-only %s is %s, want %s", name, other.Name, p.Endpoint, want)
				}
			}
		}
		out, err := l.Exec(ctx, name, "sysctl", "-n", "net.ipv6.conf.all.forwarding")
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("%s: net.ipv6.conf.all.forwarding = %q (%v), want 1 (the agent sets it)", name, out, err)
		}
		out, err = l.Exec(ctx, name, "ip", "-6", "route", "show", "type", "unreachable")
		if err != nil || !strings.Contains(string(out), lab.ClusterCIDRv6) {
			t.Errorf("%s: no fail-closed unreachable route for %s: %s (%v)", name, lab.ClusterCIDRv6, out, err)
		}
		out, err = l.Exec(ctx, name, "nft", "list", "table", "inet", "wgmesh-guard")
		if err != nil || !strings.Contains(string(out), "ip6 daddr "+lab.ClusterCIDRv6) || !strings.Contains(string(out), "ip daddr "+lab.ClusterCIDRs) {
			t.Errorf("%s: guard lacks a family:\n%s (%v)", name, out, err)
		}
	}
}

// testDualWire captures the underlay bridge while pods ping each other in
// both families across every node pair: only WireGuard UDP between node
// endpoints (over IPv4 and IPv6), the apiserver's TLS, ARP and IPv6
// neighbour discovery between node addresses may appear; no frame carries a
// pod address of either family nor the ping payload.
func testDualWire(t *testing.T, ctx context.Context, l *lab.Lab) {
	ns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", ns}, "-i", br, "-s", "0", "-w", pcap))
	const pattern = "deadbeef0badf00dcafebabe8badf00d"
	patternBytes, _ := hex.DecodeString(pattern)
	nodes := l.State().NodeNames()
	byNode := podsByNode(l)
	pings := 0
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			from, to := byNode[a][0], byNode[b][len(byNode[b])-1]
			for _, ip := range []string{to.IP, to.IPv6} {
				out, err := l.PodExec(ctx, from.Node, from.Pod, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-p", pattern, ip)
				if err != nil {
					t.Errorf("ping %s/%s -> %s/%s %s: %v\n%s", from.Node, from.Pod, to.Node, to.Pod, ip, err, out)
				}
				pings += 3
			}
		}
	}
	time.Sleep(500 * time.Millisecond) // let the last replies reach the capture
	capt.stop()
	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	pod4, pod6 := netip.MustParsePrefix(lab.ClusterCIDRs), netip.MustParsePrefix(lab.ClusterCIDRv6)
	isPod := func(a netip.Addr) bool { return pod4.Contains(a) || pod6.Contains(a) }
	endpoints := map[netip.Addr]bool{}
	for _, n := range l.State().Nodes {
		for _, ip := range n.InternalIPs() {
			endpoints[netip.MustParseAddr(ip)] = true
		}
	}
	apiservers := map[netip.Addr]bool{netip.MustParseAddr(lab.UnderlayGateway): true, netip.MustParseAddr(lab.UnderlayGatewayIPv6): true}
	var wg4, wg6, control, arp, nd int
	var bad []string
	for i, f := range frames {
		if bytes.Contains(f.Raw, patternBytes) {
			bad = append(bad, fmt.Sprintf("frame %d carries the ping payload in the clear", i))
		}
		switch {
		case f.EtherType == 0x0806:
			if isPod(f.ARPSender) || isPod(f.ARPTarget) {
				bad = append(bad, fmt.Sprintf("frame %d: ARP for pod address %s/%s", i, f.ARPSender, f.ARPTarget))
			}
			arp++
		case f.EtherType != 0x0800 && f.EtherType != 0x86dd:
			bad = append(bad, fmt.Sprintf("frame %d: unexpected ethertype %#04x", i, f.EtherType))
		case isPod(f.Src) || isPod(f.Dst):
			bad = append(bad, fmt.Sprintf("frame %d: %s -> %s proto %d carries a pod address", i, f.Src, f.Dst, f.Proto))
		case f.Proto == 17 && endpoints[f.Src] && endpoints[f.Dst] && (f.SrcPort == listenPort || f.DstPort == listenPort):
			if f.Src.Is4() {
				wg4++
			} else {
				wg6++
			}
		case f.Proto == 6 && ((apiservers[f.Dst] && f.DstPort == 6443) || (apiservers[f.Src] && f.SrcPort == 6443)):
			control++
		case f.Proto == 2 && f.Dst.IsLinkLocalMulticast():
			// IGMP membership reports of a link coming up
			// (0.0.0.0 -> 224.0.0.22): link-level, no pod in it.
		case f.Proto == 58 && icmp6Type(f) >= 130 && icmp6Type(f) <= 143:
			// Neighbour discovery and MLD between node addresses.
			nd++
		default:
			bad = append(bad, fmt.Sprintf("frame %d: unexpected %s:%d -> %s:%d proto %d", i, f.Src, f.SrcPort, f.Dst, f.DstPort, f.Proto))
		}
	}
	t.Logf("underlay capture: %d frames: %d WireGuard UDP over IPv4, %d over IPv6, %d apiserver TLS, %d ARP, %d ND/MLD; %d violations",
		len(frames), wg4, wg6, control, arp, nd, len(bad))
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
		}
		t.Errorf("plaintext or unexpected traffic on the underlay:\n%s", strings.Join(bad, "\n"))
	}
	// The capture must have seen the traffic, or it proves nothing; the
	// IPv6-only node's pairs can only have used IPv6.
	if wg4+wg6 < 2*pings || wg6 == 0 {
		t.Errorf("WireGuard frames captured: %d IPv4 + %d IPv6 for %d pings (+replies): capture missed the traffic", wg4, wg6, pings)
	}
}

// icmp6Type is the ICMPv6 type of an IPv6 frame (past its extension
// headers), or -1.
func icmp6Type(f frame) int {
	if f.EtherType != 0x86dd || f.Proto != 58 || f.L4 == 0 || len(f.Raw) <= f.L4 {
		return -1
	}
	return int(f.Raw[f.L4])
}

// testTunnelMasquerade6 proves the tunnel's IPv6 address (the subnet-router
// anycast address of the node's IPv6 podCIDR, dataplane.tunnelAddrsFor)
// works as the source the kernel's masquerade picks for traffic into the
// mesh, as kube-proxy's masquerade of a NodePort client does: the host
// pings a remote pod from its underlay address, masqueraded on the way
// out of wgmesh0; the pod sees the tunnel address and its replies arrive.
func testTunnelMasquerade6(t *testing.T, ctx context.Context, l *lab.Lab) {
	st := l.State()
	var src *lab.Node
	for _, name := range st.NodeNames() {
		if n := st.Nodes[name]; n.UnderlayIPv6 != "" {
			src = n
			break
		}
	}
	if src == nil {
		t.Fatal("no node with an IPv6 underlay address")
	}
	var dst lab.PodRef
	for _, p := range l.Pods() {
		if p.Node != src.Name {
			dst = p
			break
		}
	}
	tunnel := netip.MustParsePrefix(src.PodCIDRv6).Addr().String()
	rules := fmt.Sprintf("table ip6 wgmesh-e2e-masq {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wgmesh0\" ip6 saddr %s masquerade\n }\n}\n", src.UnderlayIPv6)
	argv, _ := l.NodeCommand(src.Name, "nft", "-f", "-")
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install masquerade rule in %s: %v\n%s", src.Name, err, out)
	}
	t.Cleanup(func() {
		_, _ = l.Exec(context.Background(), src.Name, "nft", "delete", "table", "ip6", "wgmesh-e2e-masq")
	})

	argv, err := l.PodCommand(dst.Node, dst.Pod, "tcpdump", "-i", "eth0", "-n", "-l", "-p", "icmp6 and ip6[40] == 128")
	if err != nil {
		t.Fatal(err)
	}
	capt := startCapture(t, argv)
	out, err := l.Exec(ctx, src.Name, "ping", "-n", "-c", "3", "-W", "2", "-I", src.UnderlayIPv6, dst.IPv6)
	if err != nil {
		t.Errorf("ping from %s's underlay address %s to %s/%s %s, masqueraded into the mesh: %v\n%s", src.Name, src.UnderlayIPv6, dst.Node, dst.Pod, dst.IPv6, err, out)
	}
	time.Sleep(200 * time.Millisecond)
	lines := capt.stop()
	var from []string
	for _, line := range lines {
		if f := strings.Fields(line); len(f) > 4 && f[1] == "IP6" {
			from = append(from, f[2])
		}
	}
	if len(from) == 0 {
		t.Fatalf("%s/%s saw no echo request: %v", dst.Node, dst.Pod, lines)
	}
	for _, s := range from {
		if s != tunnel {
			t.Errorf("%s/%s saw an echo request from %s, want the tunnel address %s", dst.Node, dst.Pod, s, tunnel)
		}
	}
	t.Logf("%d echo requests masqueraded to %s (the tunnel's address) reached %s and were answered", len(from), tunnel, dst.IPv6)
}

// testPolicyIPv6: an egress policy whose ipBlocks allow all of IPv4 and all
// of IPv6 except one pod's IPv6 address holds for exactly that address:
// the client reaches the server over IPv4 and another pod over IPv6, not
// the server over IPv6; deleting the policy opens it again.
func testPolicyIPv6(t *testing.T, ctx context.Context, l *lab.Lab) {
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	nodes := l.State().NodeNames()
	e := &npEnv{t: t, l: l, admin: admin, exe: exe, pods: map[string]npPod{}, n1: nodes[0], n2: nodes[1]}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "np6"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v6 := map[string]string{}
	for _, p := range []struct{ name, node string }{{"client", e.n1}, {"server", e.n2}, {"other", e.n2}} {
		pod, err := l.AddPodWith(ctx, p.node, lab.PodOptions{Namespace: "np6", Labels: map[string]string{"app": p.name}})
		if err != nil {
			t.Fatalf("add pod %s: %v", p.name, err)
		}
		e.pods[p.name] = npPod{node: p.node, name: pod.Name, ns: "np6", ip: pod.IP}
		v6[p.name] = pod.IPv6
	}
	e.serve("server", "8080")
	e.serve("other", "8080")
	e.expect(t, "client", v6["server"], 8080, true)

	took := e.apply(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "np6", Name: "not-the-server-v6"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "::/0", Except: []string{v6["server"] + "/128"}}},
			}}},
		},
	}, "client", v6["server"], 8080, false)
	t.Logf("IPv6 ipBlock except took effect after %s", took)
	e.expect(t, "client", e.pods["server"].ip, 8080, true) // the server over IPv4
	e.expect(t, "client", v6["other"], 8080, true)         // another pod over IPv6
	e.ping(t, "client", v6["server"], false)

	start := time.Now()
	e.delete(ctx, "np6", "not-the-server-v6")
	t.Logf("IPv6 traffic restored after %s", e.waitFor("client", v6["server"], 8080, true, start))
}
