package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
)

// TestRealNodesDualStack runs the real node stack dual-stack (issue 16):
// kube-controller-manager allocates a podCIDR of each family, kubelets
// register node IPs of both families, IPv6 first (lab.UpOptions.IPv6Underlay
// in the kubelet mode), so the agents publish IPv6 endpoints and WireGuard
// runs over IPv6; kube-proxy (nftables) serves Services of both families. An agnhost Deployment spreads over the nodes behind
// RequireDualStack ClusterIP, NodePort and headless Services. The underlay
// is captured for the whole test: no frame may carry a pod address of
// either family.
func TestRealNodesDualStack(t *testing.T) {
	// Up took 83 s for 2 nodes at load 8 on the shared 2-core box; 8
	// minutes as for TestRealNodes.
	l := upLab(t, "kd", lab.UpOptions{Nodes: 3, Pods: 1, Kubelet: true, DualStack: true, IPv6Underlay: true}, 8*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	ns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"nsenter", "--net=/run/netns/" + ns, "--"}, "-i", br, "-s", "128", "-w", pcap))

	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("NodesCarryBothFamilies", func(t *testing.T) { testKubeletDualNodes(t, ctx, l, c) })
	t.Run("PingMatrixIPv4", func(t *testing.T) { requireMatrixOf(t, func() lab.Matrix { return l.PingMatrix(ctx, 5) }) })
	t.Run("PingMatrixIPv6", func(t *testing.T) { requireMatrixOf(t, func() lab.Matrix { return l.PingMatrix6(ctx, 5) }) })
	backends := deployEcho(t, ctx, c)
	for _, b := range backends {
		if b.IP == "" || b.IPv6 == "" {
			t.Fatalf("echo backend %+v: want an address of each family", b)
		}
	}
	svc := createDualStackServices(t, ctx, c)
	t.Run("ClusterIPBothFamilies", func(t *testing.T) { testDualClusterIP(t, ctx, l, backends, svc) })
	t.Run("NodePortIPv6FromAnotherNode", func(t *testing.T) { nodePortsAnswer(t, ctx, l, backends, svc.NodePort, true) })
	t.Run("NodePortIPv6ToThirdNode", func(t *testing.T) { nodePortToThirdNode(t, ctx, l, c, true) })
	t.Run("HeadlessBothFamilies", func(t *testing.T) { testDualHeadless(t, ctx, l, c, backends) })

	time.Sleep(500 * time.Millisecond) // let the last replies reach the capture
	capt.stop()
	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	bad, wg4, wg6 := dualPodAddressFrames(frames, l)
	t.Logf("underlay capture across the dual-stack real-node test: %d frames (%d WireGuard UDP over IPv4, %d over IPv6), %d with a pod address",
		len(frames), wg4, wg6, len(bad))
	// Every endpoint is IPv6: WireGuard over IPv4 would mean an endpoint
	// the agents never published.
	if wg6 == 0 || wg4 != 0 {
		t.Errorf("WireGuard frames: %d over IPv6, %d over IPv4; want IPv6 only (and some: else the capture is broken)", wg6, wg4)
	}
	if len(bad) > 0 {
		t.Errorf("%d underlay frames carry a pod address, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
}

// dualPodAddressFrames lists the frames that carry a pod address of either
// family: as IPv4/IPv6 source or destination, in ARP, or as the target of
// IPv6 neighbour discovery; and counts WireGuard UDP between node addresses.
func dualPodAddressFrames(frames []frame, l *lab.Lab) (bad []string, wg4, wg6 int) {
	pod4, pod6 := netip.MustParsePrefix(lab.ClusterCIDRs), netip.MustParsePrefix(lab.ClusterCIDRv6)
	isPod := func(a netip.Addr) bool { return pod4.Contains(a) || pod6.Contains(a) }
	nodes := map[netip.Addr]bool{}
	for _, n := range l.State().Nodes {
		for _, ip := range n.InternalIPs() {
			nodes[netip.MustParseAddr(ip)] = true
		}
	}
	for i, f := range frames {
		switch {
		case f.EtherType == 0x0806:
			if isPod(f.ARPSender) || isPod(f.ARPTarget) {
				bad = append(bad, fmt.Sprintf("frame %d: ARP for pod address %s/%s", i, f.ARPSender, f.ARPTarget))
			}
		case f.EtherType != 0x0800 && f.EtherType != 0x86dd:
		case isPod(f.Src) || isPod(f.Dst):
			bad = append(bad, fmt.Sprintf("frame %d: %s -> %s proto %d", i, f.Src, f.Dst, f.Proto))
		case f.Proto == 58 && (icmp6Type(f) == 135 || icmp6Type(f) == 136):
			// Neighbour solicitation/advertisement: the target address
			// follows the 4 reserved bytes after the ICMPv6 header.
			off := f.L4 + 8
			if len(f.Raw) >= off+16 {
				if tgt := netip.AddrFrom16([16]byte(f.Raw[off : off+16])); isPod(tgt) {
					bad = append(bad, fmt.Sprintf("frame %d: neighbour discovery for pod address %s", i, tgt))
				}
			}
		case f.Proto == 17 && nodes[f.Src] && nodes[f.Dst] && (f.SrcPort == listenPort || f.DstPort == listenPort):
			if f.Src.Is4() {
				wg4++
			} else {
				wg6++
			}
		}
	}
	return bad, wg4, wg6
}

// testKubeletDualNodes: kube-controller-manager gave every node an IPv4
// /24 and an IPv6 /64 of the cluster ranges (IPv4 first); the kubelets
// registered node IPs of both families in the lab's order (IPv6 first);
// each agent published the first as its endpoint; every peer's allowed IPs
// are the other node's two podCIDRs and its endpoint is IPv6.
func testKubeletDualNodes(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface) {
	pod4, pod6 := netip.MustParsePrefix(lab.ClusterCIDRs), netip.MustParsePrefix(lab.ClusterCIDRv6)
	byCIDR := map[string]string{}
	cidrsOf := map[string][]string{}
	endpointOf := map[string]string{}
	for _, name := range l.State().NodeNames() {
		n := l.State().Nodes[name]
		node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cidrs := node.Spec.PodCIDRs
		if len(cidrs) != 2 {
			t.Errorf("%s: podCIDRs %v, want one of each family", name, cidrs)
			continue
		}
		p4, err4 := netip.ParsePrefix(cidrs[0])
		p6, err6 := netip.ParsePrefix(cidrs[1])
		if err4 != nil || err6 != nil || !p4.Addr().Is4() || p4.Bits() != 24 || !pod4.Contains(p4.Addr()) ||
			!p6.Addr().Is6() || p6.Bits() != 64 || !pod6.Contains(p6.Addr()) {
			t.Errorf("%s: podCIDRs %v, want an IPv4 /24 of %s, then an IPv6 /64 of %s", name, cidrs, pod4, pod6)
		}
		cidrsOf[name] = cidrs
		for _, p := range cidrs {
			byCIDR[p] = name
		}
		var internal []string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = append(internal, a.Address)
			}
		}
		if !slices.Equal(internal, n.InternalIPs()) {
			t.Errorf("%s: InternalIPs %v, want %v (kubelet --node-ip)", name, internal, n.InternalIPs())
		}
		want := net.JoinHostPort(n.UnderlayIPv6, fmt.Sprint(listenPort))
		if got := node.Annotations[mesh.AnnotationEndpoint]; got != want || n.InternalIPs()[0] != n.UnderlayIPv6 {
			t.Errorf("%s: published endpoint %q, want %q (its first InternalIP, the IPv6 one)", name, got, want)
		}
		endpointOf[name] = want
	}
	for _, name := range l.State().NodeNames() {
		peers, err := wgPeers(ctx, l, name)
		if err != nil {
			t.Fatal(err)
		}
		// Besides the other nodes, every agent has the lab's control plane
		// as an external Peer (its tunnel address only; see
		// lab.ControlPlanePeer).
		cpPeer := lab.ControlPlaneTunnelIP + "/32"
		nodePeers := slices.DeleteFunc(slices.Clone(peers), func(p wgPeer) bool {
			return slices.Equal(p.AllowedIPs, []string{cpPeer})
		})
		if cp := len(peers) - len(nodePeers); cp != 1 {
			t.Errorf("%s has %d peers for the control plane (allowed IPs %s only), want 1", name, cp, cpPeer)
		}
		if len(nodePeers) != len(l.State().Nodes)-1 {
			t.Errorf("%s has %d node peers, want %d", name, len(nodePeers), len(l.State().Nodes)-1)
		}
		for _, p := range nodePeers {
			other := ""
			for _, a := range p.AllowedIPs {
				if n, ok := byCIDR[a]; ok {
					other = n
				}
			}
			got := slices.Sorted(slices.Values(p.AllowedIPs))
			if other == "" || !slices.Equal(got, slices.Sorted(slices.Values(cidrsOf[other]))) {
				t.Errorf("%s: peer %s allowed IPs %v, want exactly another node's two podCIDRs", name, p.PublicKey, got)
				continue
			}
			if p.Endpoint != endpointOf[other] {
				t.Errorf("%s: peer %s at %s, want its IPv6 endpoint %s", name, other, p.Endpoint, endpointOf[other])
			}
			t.Logf("%s: peer %s at %s, allowed IPs %v", name, other, p.Endpoint, got)
		}
		out, err := l.Exec(ctx, name, "sysctl", "-n", "net.ipv6.conf.all.forwarding")
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("%s: net.ipv6.conf.all.forwarding = %q (%v), want 1", name, out, err)
		}
	}
}

type dualServices struct {
	ClusterIPs []string // IPv4, then IPv6
	NodePort   int32
}

// createDualStackServices makes the echo Services RequireDualStack: a
// ClusterIP one, a NodePort one and a headless one.
func createDualStackServices(t *testing.T, ctx context.Context, c kubernetes.Interface) dualServices {
	t.Helper()
	port := []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}
	sel := map[string]string{"app": "echo"}
	req := corev1.IPFamilyPolicyRequireDualStack
	fams := []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	mk := func(name string, typ corev1.ServiceType, clusterIP string) *corev1.Service {
		svc, err := c.CoreV1().Services(echoNS).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Type: typ, ClusterIP: clusterIP, Selector: sel, Ports: port,
				IPFamilyPolicy: &req, IPFamilies: fams},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	ci := mk("echo", corev1.ServiceTypeClusterIP, "")
	np := mk("echo-nodeport", corev1.ServiceTypeNodePort, "")
	mk("echo-headless", corev1.ServiceTypeClusterIP, corev1.ClusterIPNone)
	svc6 := netip.MustParsePrefix(lab.ServiceCIDRv6)
	if len(ci.Spec.ClusterIPs) != 2 || !netip.MustParsePrefix(lab.ServiceCIDR).Contains(netip.MustParseAddr(ci.Spec.ClusterIPs[0])) ||
		!svc6.Contains(netip.MustParseAddr(ci.Spec.ClusterIPs[1])) {
		t.Fatalf("echo Service clusterIPs %v, want one of %s, then one of %s", ci.Spec.ClusterIPs, lab.ServiceCIDR, lab.ServiceCIDRv6)
	}
	t.Logf("echo Service clusterIPs %v, NodePort %d", ci.Spec.ClusterIPs, np.Spec.Ports[0].NodePort)
	return dualServices{ClusterIPs: ci.Spec.ClusterIPs, NodePort: np.Spec.Ports[0].NodePort}
}

// urlHost brackets an IPv6 address for a URL.
func urlHost(ip string) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]"
	}
	return ip
}

// clientHost is the address part of agnhost's /clientip answer (host:port,
// IPv6 in brackets).
func clientHost(s string) string {
	host, _, err := net.SplitHostPort(strings.TrimSpace(s))
	if err != nil {
		return strings.TrimSpace(s)
	}
	return host
}

// testDualClusterIP: from the lab pod on every node, each family's
// ClusterIP reaches the backends on both other nodes, and the backend sees
// the client's own pod address of that family (no NAT between pods).
func testDualClusterIP(t *testing.T, ctx context.Context, l *lab.Lab, backends []echoBackend, svc dualServices) {
	nodeOf := map[string]string{}
	for _, b := range backends {
		nodeOf[b.Name] = b.Node
	}
	for _, client := range l.Pods() {
		for i, cip := range svc.ClusterIPs {
			own := []string{client.IP, client.IPv6}[i]
			base := "http://" + urlHost(cip)
			curl := func(path string) ([]byte, error) {
				return l.PodExec(ctx, client.Node, client.Pod, "curl", "-g", "-sS", "-m", "3", base+path)
			}
			// kube-proxy programs a new Service within seconds; a minute
			// covers a loaded box.
			if _, err := curlUntil(ctx, time.Minute, func() ([]byte, error) { return curl("/hostname") },
				func(s string) bool { _, ok := nodeOf[s]; return ok }); err != nil {
				t.Errorf("%s/%s via ClusterIP %s: %v", client.Node, client.Pod, cip, err)
				continue
			}
			seen := map[string]bool{}
			// Random backend choice: 60 tries miss a given one of three
			// with probability (2/3)^60 ~ 3e-11.
			for j := 0; j < 60 && len(seen) < 3; j++ {
				if out, err := curl("/hostname"); err == nil {
					seen[strings.TrimSpace(string(out))] = true
				}
			}
			remote := 0
			for name := range seen {
				if n, ok := nodeOf[name]; ok && n != client.Node {
					remote++
				}
			}
			if remote < 2 {
				t.Errorf("%s/%s via ClusterIP %s reached %v; want the backends on both other nodes", client.Node, client.Pod, cip, seen)
			}
			for j := 0; j < 6; j++ {
				out, err := curl("/clientip")
				if err != nil {
					t.Errorf("%s/%s clientip via %s: %v %s", client.Node, client.Pod, cip, err, out)
					continue
				}
				if got := clientHost(string(out)); got != own {
					t.Errorf("%s/%s (pod address %s): the backend behind %s saw client %q: NAT between pods", client.Node, client.Pod, own, cip, got)
				}
			}
			t.Logf("%s/%s via %s: backends %v answered, client seen as its own pod address %s", client.Node, client.Pod, cip, slices.Sorted(maps.Keys(seen)), own)
		}
	}
}

// testDualHeadless: the headless RequireDualStack Service's EndpointSlices
// list exactly the backends' addresses of both families; the cluster DNS,
// asked from inside a backend container (its own resolv.conf, kubectl exec
// through the apiserver and the kubelet), answers A and AAAA with them; and
// every IPv6 endpoint answers a pod on another node directly.
func testDualHeadless(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface, backends []echoBackend) {
	var want []string
	for _, b := range backends {
		want = append(want, b.IP, b.IPv6)
	}
	slices.Sort(want)
	var got []string
	deadline := time.Now().Add(time.Minute)
	for {
		got = nil
		list, err := c.DiscoveryV1().EndpointSlices(echoNS).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=echo-headless"})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list.Items {
			for _, e := range s.Endpoints {
				got = append(got, e.Addresses...)
			}
		}
		slices.Sort(got)
		if slices.Equal(got, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("headless Service endpoints %v, want the backends' %v", got, want)
	}
	name := "echo-headless." + echoNS + ".svc.cluster.local."
	for _, typ := range []string{"A", "AAAA"} {
		var wantDNS []string
		for _, b := range backends {
			if typ == "A" {
				wantDNS = append(wantDNS, b.IP)
			} else {
				wantDNS = append(wantDNS, b.IPv6)
			}
		}
		slices.Sort(wantDNS)
		argv := l.KubectlCommand("-n", echoNS, "exec", backends[0].Name, "--", "nslookup", "-type="+typ, name)
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		answers := nslookupAnswers(string(out))
		slices.Sort(answers)
		if err != nil || !slices.Equal(answers, wantDNS) {
			t.Errorf("nslookup -type=%s %s in %s: %v, want %v (%v)\n%s", typ, name, backends[0].Name, answers, wantDNS, err, out)
			continue
		}
		t.Logf("cluster DNS %s %s from pod %s on %s: %v", typ, name, backends[0].Name, backends[0].Node, answers)
	}
	for _, b := range backends {
		for _, client := range l.Pods() {
			if client.Node == b.Node {
				continue
			}
			out, err := l.PodExec(ctx, client.Node, client.Pod, "curl", "-g", "-sS", "-m", "3", "http://["+b.IPv6+"]:8080/hostname")
			if err != nil || strings.TrimSpace(string(out)) != b.Name {
				t.Errorf("headless endpoint %s (%s on %s) from %s/%s: %q %v", b.IPv6, b.Name, b.Node, client.Node, client.Pod, out, err)
			}
			break
		}
	}
}

// nslookupAnswers are the addresses busybox nslookup printed for the name
// (the "Address:" lines after "Name:"; the server's own come before).
func nslookupAnswers(out string) []string {
	var addrs []string
	named := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 1 && f[0] == "Name:":
			named = true
		case named && len(f) >= 2 && f[0] == "Address:":
			if a, err := netip.ParseAddr(f[1]); err == nil {
				addrs = append(addrs, a.String())
			}
		}
	}
	return addrs
}
