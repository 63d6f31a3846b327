package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
)

const (
	podCIDRs   = "10.244.0.0/16"
	listenPort = 51820
)

// TestMesh runs the checks that leave the cluster as they found it on one
// shared 3-node lab with 2 pods per node.
func TestMesh(t *testing.T) {
	l := newLab(t, 3, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t.Run("AgentsRunUnderShippedClusterRole", func(t *testing.T) { testClusterRole(t, ctx, l) })
	t.Run("PingMatrixWithoutNAT", func(t *testing.T) { testPingMatrix(t, ctx, l) })
	t.Run("EncryptedOnTheWire", func(t *testing.T) { testWire(t, ctx, l) })
	t.Run("ServiceDNATAndHairpin", func(t *testing.T) { testServices(t, ctx, l) })
	t.Run("NodeJoinAndRemoval", func(t *testing.T) { testJoinAndRemoval(t, ctx, l) })
}

// testClusterRole proves the agents hold exactly the shipped ClusterRole:
// every verb the agent needs is allowed for the agents' own token, and the
// token's rules beyond what any authenticated identity gets are exactly the
// role's. A verb removed from (or added to) deploy/base/clusterrole.yaml
// fails this test.
func testClusterRole(t *testing.T, ctx context.Context, l *lab.Lab) {
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := lab.ShippedClusterRole()
	if err != nil {
		t.Fatal(err)
	}
	live, err := admin.RbacV1().ClusterRoles().Get(ctx, lab.AgentServiceAccount, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(shipped.Rules, live.Rules); d != "" {
		t.Errorf("ClusterRole in the lab differs from deploy/base (-shipped +live):\n%s", d)
	}

	// What the agent does: informer on Nodes, patch its own Node, Events
	// on Nodes (core or events.k8s.io, in "default" where Node events go).
	needed := []authorizationv1.ResourceAttributes{
		{Resource: "nodes", Verb: "get"},
		{Resource: "nodes", Verb: "list"},
		{Resource: "nodes", Verb: "watch"},
		{Resource: "nodes", Verb: "patch"},
		{Resource: "events", Verb: "create", Namespace: "default"},
		{Resource: "events", Verb: "patch", Namespace: "default"},
		{Group: "events.k8s.io", Resource: "events", Verb: "create", Namespace: "default"},
		{Group: "events.k8s.io", Resource: "events", Verb: "patch", Namespace: "default"},
		// NetworkPolicy engine: informers over all pods, namespaces
		// and policies; events on policies in their namespaces.
		{Resource: "pods", Verb: "list"},
		{Resource: "pods", Verb: "watch"},
		{Resource: "namespaces", Verb: "list"},
		{Resource: "namespaces", Verb: "watch"},
		{Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "list"},
		{Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "watch"},
		{Resource: "events", Verb: "create", Namespace: "kube-system"},
		// External peers: the Peer informer and the Accepted condition.
		{Group: "wgmesh.io", Resource: "peers", Verb: "get"},
		{Group: "wgmesh.io", Resource: "peers", Verb: "list"},
		{Group: "wgmesh.io", Resource: "peers", Verb: "watch"},
		{Group: "wgmesh.io", Resource: "peers", Subresource: "status", Verb: "patch"},
	}
	// A sample of what it must not do.
	forbidden := []authorizationv1.ResourceAttributes{
		{Resource: "nodes", Verb: "create"},
		{Resource: "nodes", Verb: "update"},
		{Resource: "nodes", Verb: "delete"},
		{Resource: "nodes", Subresource: "status", Verb: "patch"},
		{Resource: "secrets", Verb: "get", Namespace: "kube-system"},
		{Resource: "secrets", Verb: "list", Namespace: lab.AgentNamespace},
		{Resource: "pods", Verb: "create", Namespace: "default"},
		{Resource: "pods", Subresource: "exec", Verb: "create", Namespace: "default"},
		{Group: "networking.k8s.io", Resource: "networkpolicies", Verb: "update", Namespace: "default"},
		{Resource: "configmaps", Verb: "get", Namespace: lab.AgentNamespace},
		{Resource: "events", Verb: "delete", Namespace: "default"},
		{Resource: "serviceaccounts", Subresource: "token", Verb: "create", Namespace: lab.AgentNamespace},
		{Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Verb: "escalate"},
		{Group: "wgmesh.io", Resource: "peers", Verb: "update"},
		{Group: "wgmesh.io", Resource: "peers", Verb: "create"},
	}
	wantUser := "system:serviceaccount:" + lab.AgentNamespace + ":" + lab.AgentServiceAccount
	for _, node := range l.State().NodeNames() {
		cfg, err := l.AgentRESTConfig(node)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.CertFile != "" || cfg.CertData != nil || cfg.Username != "" {
			t.Errorf("%s: agent kubeconfig carries credentials other than its token", node)
		}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		who, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("%s: self subject review: %v", node, err)
		}
		if u := who.Status.UserInfo; u.Username != wantUser {
			t.Errorf("%s: agent authenticates as %q (groups %v), want %q", node, u.Username, u.Groups, wantUser)
		}
		for _, ra := range needed {
			if !allowed(t, ctx, c, ra) {
				t.Errorf("%s: agent may not %s %s%s (needed)", node, ra.Verb, groupResource(ra), nsSuffix(ra))
			}
		}
		for _, ra := range forbidden {
			if allowed(t, ctx, c, ra) {
				t.Errorf("%s: agent may %s %s%s (must not)", node, ra.Verb, groupResource(ra), nsSuffix(ra))
			}
		}
	}

	// Exactness: the agent's rules minus those of an identity with no
	// bindings at all equal the shipped role's rules.
	agentCfg, err := l.AgentRESTConfig(l.State().NodeNames()[0])
	if err != nil {
		t.Fatal(err)
	}
	agent, err := kubernetes.NewForConfig(agentCfg)
	if err != nil {
		t.Fatal(err)
	}
	nobodySA := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "e2e-nobody", Namespace: lab.AgentNamespace}}
	if _, err := admin.CoreV1().ServiceAccounts(lab.AgentNamespace).Create(ctx, nobodySA, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tok, err := admin.CoreV1().ServiceAccounts(lab.AgentNamespace).CreateToken(ctx, nobodySA.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nobodyCfg := *agentCfg
	nobodyCfg.BearerToken = tok.Status.Token
	nobodyCfg.BearerTokenFile = ""
	nobody, err := kubernetes.NewForConfig(&nobodyCfg)
	if err != nil {
		t.Fatal(err)
	}
	base := ruleSet(t, ctx, nobody)
	var extra []string
	for r := range ruleSet(t, ctx, agent) {
		if !base[r] {
			extra = append(extra, r)
		}
	}
	sort.Strings(extra)
	var want []string
	for _, r := range shipped.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					want = append(want, g+"/"+res+"/"+v)
				}
			}
		}
	}
	sort.Strings(want)
	if d := cmp.Diff(want, extra); d != "" {
		t.Errorf("agent token's own rules differ from the shipped ClusterRole (-shipped +agent):\n%s", d)
	}
	t.Logf("agents authenticate as %s and hold exactly: %s", wantUser, strings.Join(extra, " "))
}

func allowed(t *testing.T, ctx context.Context, c kubernetes.Interface, ra authorizationv1.ResourceAttributes) bool {
	t.Helper()
	r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject access review %+v: %v", ra, err)
	}
	return r.Status.Allowed
}

// ruleSet expands the identity's resource rules in namespace "default" to
// group/resource/verb strings.
func ruleSet(t *testing.T, ctx context.Context, c kubernetes.Interface) map[string]bool {
	t.Helper()
	r, err := c.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: "default"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject rules review: %v", err)
	}
	set := map[string]bool{}
	for _, rr := range r.Status.ResourceRules {
		for _, g := range rr.APIGroups {
			for _, res := range rr.Resources {
				for _, v := range rr.Verbs {
					set[g+"/"+res+"/"+v] = true
				}
			}
		}
	}
	return set
}

func groupResource(ra authorizationv1.ResourceAttributes) string {
	s := ra.Resource
	if ra.Subresource != "" {
		s += "/" + ra.Subresource
	}
	if ra.Group != "" {
		s += "." + ra.Group
	}
	return s
}

func nsSuffix(ra authorizationv1.ResourceAttributes) string {
	if ra.Namespace == "" {
		return ""
	}
	return " in " + ra.Namespace
}

// icmpEcho matches tcpdump's line for an echo request and captures the source.
var icmpEcho = regexp.MustCompile(`IP (\d+\.\d+\.\d+\.\d+) > (\d+\.\d+\.\d+\.\d+): ICMP echo request`)

// testPingMatrix: every pod reaches every pod; a receiver sees each sender's
// own pod IP as the source (no NAT anywhere on the path).
func testPingMatrix(t *testing.T, ctx context.Context, l *lab.Lab) {
	requireMatrix(t, ctx, l)
	byNode := podsByNode(l)
	for _, recvNode := range l.State().NodeNames() {
		recv := byNode[recvNode][0]
		argv, err := l.PodCommand(recv.Node, recv.Pod, "tcpdump", "-i", "eth0", "-n", "-l", "-p", "icmp[icmptype] == icmp-echo")
		if err != nil {
			t.Fatal(err)
		}
		capt := startCapture(t, argv)
		want := map[string]bool{}
		for _, p := range l.Pods() {
			if p.Node == recvNode {
				continue
			}
			want[p.IP] = true
			if err := l.Ping(ctx, p, recv.IP, 3); err != nil {
				t.Errorf("%s/%s -> %s/%s: %v", p.Node, p.Pod, recv.Node, recv.Pod, err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		seen := map[string]bool{}
		for _, line := range capt.stop() {
			m := icmpEcho.FindStringSubmatch(line)
			if m == nil || m[2] != recv.IP {
				continue
			}
			seen[m[1]] = true
		}
		if d := cmp.Diff(want, seen); d != "" {
			t.Errorf("sources of echo requests seen by %s/%s (%s) differ from the senders' pod IPs (-want +seen):\n%s",
				recv.Node, recv.Pod, recv.IP, d)
		}
	}
}

// testWire captures the underlay bridge while pods talk across nodes: only
// WireGuard UDP between node endpoints (and the agents' TLS to the
// apiserver) may appear; no frame may carry a pod address, nor the ping
// payload pattern.
func testWire(t *testing.T, ctx context.Context, l *lab.Lab) {
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
			out, err := l.PodExec(ctx, from.Node, from.Pod, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-p", pattern, to.IP)
			if err != nil {
				t.Errorf("ping %s/%s -> %s/%s: %v\n%s", from.Node, from.Pod, to.Node, to.Pod, err, out)
			}
			pings += 3
		}
	}
	// Bulk TCP too: a second of iperf3 between pods on two nodes.
	srv, cli := byNode[nodes[0]][0], byNode[nodes[1]][0]
	iperfOnce(t, ctx, l, srv, cli, srv.IP, 5201)
	capt.stop()

	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	podNet := netip.MustParsePrefix(podCIDRs)
	apiserver := netip.MustParseAddr(lab.UnderlayGateway)
	endpoints := map[netip.Addr]bool{}
	for _, n := range l.State().Nodes {
		endpoints[netip.MustParseAddr(n.Endpoint())] = true
	}
	var wg, control, arp, linkLocal int
	var bad []string
	for i, f := range frames {
		if bytes.Contains(f.Raw, patternBytes) {
			bad = append(bad, fmt.Sprintf("frame %d carries the ping payload in the clear", i))
		}
		switch f.EtherType {
		case 0x0806:
			if podNet.Contains(f.ARPSender) || podNet.Contains(f.ARPTarget) {
				bad = append(bad, fmt.Sprintf("frame %d: ARP for pod address %s/%s", i, f.ARPSender, f.ARPTarget))
			}
			arp++
		case 0x0800:
			switch {
			case podNet.Contains(f.Src) || podNet.Contains(f.Dst):
				bad = append(bad, fmt.Sprintf("frame %d: IPv4 %s -> %s proto %d carries a pod address", i, f.Src, f.Dst, f.Proto))
			case f.Proto == 17 && endpoints[f.Src] && endpoints[f.Dst] && (f.SrcPort == listenPort || f.DstPort == listenPort):
				wg++
			case f.Proto == 6 && ((f.Dst == apiserver && f.DstPort == 6443) || (f.Src == apiserver && f.SrcPort == 6443)):
				control++
			case f.Proto == 2 && f.Dst.IsLinkLocalMulticast():
				// IGMP membership reports of a link coming up
				// (0.0.0.0 -> 224.0.0.22): link-level, no pod in it.
			default:
				bad = append(bad, fmt.Sprintf("frame %d: unexpected IPv4 %s:%d -> %s:%d proto %d", i, f.Src, f.SrcPort, f.Dst, f.DstPort, f.Proto))
			}
		case 0x86dd:
			// Link-local neighbour discovery / MLD of the veths is not
			// pod traffic; anything routable would be.
			if (f.Src.IsLinkLocalUnicast() || f.Src.IsUnspecified()) && (f.Dst.IsLinkLocalUnicast() || f.Dst.IsLinkLocalMulticast() || f.Dst.IsInterfaceLocalMulticast()) {
				linkLocal++
			} else {
				bad = append(bad, fmt.Sprintf("frame %d: unexpected IPv6 %s -> %s proto %d", i, f.Src, f.Dst, f.Proto))
			}
		default:
			bad = append(bad, fmt.Sprintf("frame %d: unexpected ethertype %#04x", i, f.EtherType))
		}
	}
	t.Logf("underlay capture: %d frames: %d WireGuard UDP, %d apiserver TLS, %d ARP, %d IPv6 link-local; %d violations",
		len(frames), wg, control, arp, linkLocal, len(bad))
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
		}
		t.Errorf("plaintext or unexpected traffic on the underlay:\n%s", strings.Join(bad, "\n"))
	}
	// The capture must have seen the traffic, or it proves nothing.
	if wg < 2*pings {
		t.Errorf("only %d WireGuard frames captured for %d pings (+replies) and an iperf3 run: capture missed the traffic", wg, pings)
	}
}

// iperfOnce runs a one-shot iperf3 server on port 5201 in srv and a
// 1-second client in cli towards addr:port and returns the server's log.
func iperfOnce(t *testing.T, ctx context.Context, l *lab.Lab, srv, cli lab.PodRef, addr string, port int) string {
	t.Helper()
	argv, err := l.PodCommand(srv.Node, srv.Pod, "iperf3", "-s", "-1", "-p", "5201", "--forceflush")
	if err != nil {
		t.Fatal(err)
	}
	server := startLineCmd(t, argv, "Server listening")
	out, err := l.PodExec(ctx, cli.Node, cli.Pod, "timeout", "30", "iperf3", "-c", addr, "-p", fmt.Sprint(port), "-t", "1")
	log := server.wait(10 * time.Second)
	if err != nil {
		t.Errorf("iperf3 %s/%s -> %s:%d: %v\n%s\nserver:\n%s", cli.Node, cli.Pod, addr, port, err, out, log)
	}
	return log
}

// testServices installs kube-proxy-style DNAT rules in a node: a ClusterIP
// whose endpoint is a pod on another node, and one whose endpoint is the
// very pod that connects (hairpin, masqueraded as kube-proxy does).
func testServices(t *testing.T, ctx context.Context, l *lab.Lab) {
	nodes := l.State().NodeNames()
	client := firstPod(t, l, nodes[0])
	backend := firstPod(t, l, nodes[1])

	const clusterIP, hairpinIP = "10.96.0.10", "10.96.0.11"
	rules := fmt.Sprintf(`table ip wgmesh-e2e-svc {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[1]s tcp dport 80 dnat to %[3]s:5201
		ip daddr %[2]s tcp dport 80 ip saddr %[4]s meta mark set meta mark | 0x4000
		ip daddr %[2]s tcp dport 80 dnat to %[4]s:5201
	}
	chain out {
		type nat hook output priority -100; policy accept;
		ip daddr %[1]s tcp dport 80 dnat to %[3]s:5201
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x4000 == 0x4000 masquerade
	}
}
`, clusterIP, hairpinIP, backend.IP, backend.IP)
	for _, node := range []string{client.Node, backend.Node} {
		argv, _ := l.NodeCommand(node, "nft", "-f", "-")
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("install service rules in %s: %v\n%s", node, err, out)
		}
		t.Cleanup(func() { _, _ = l.Exec(context.Background(), node, "nft", "delete", "table", "ip", "wgmesh-e2e-svc") })
	}

	t.Run("ClusterIPToPodOnOtherNode", func(t *testing.T) {
		log := iperfOnce(t, ctx, l, backend, client, clusterIP, 80)
		// Service traffic from a pod keeps its source (kube-proxy does not
		// masquerade pod->service->pod).
		if !strings.Contains(log, "Accepted connection from "+client.IP+",") {
			t.Errorf("backend did not see the client pod's own address %s:\n%s", client.IP, log)
		}
	})
	t.Run("Hairpin", func(t *testing.T) {
		log := iperfOnce(t, ctx, l, backend, backend, hairpinIP, 80)
		// The connection went out through the bridge and back in
		// (hairpin), masqueraded to the node's pod gateway as kube-proxy
		// does for a pod reaching itself through its service.
		gw := netip.MustParsePrefix(l.State().Nodes[backend.Node].PodCIDR).Addr().Next().String()
		if !strings.Contains(log, "Accepted connection from "+gw+",") {
			t.Errorf("backend did not see the hairpin connection from the gateway %s:\n%s", gw, log)
		}
	})
}

// testJoinAndRemoval adds a node and measures how long until every existing
// node's pod reaches its pod and back, then removes it and waits until its
// peer and route are gone from every other node.
func testJoinAndRemoval(t *testing.T, ctx context.Context, l *lab.Lab) {
	start := time.Now()
	n, err := l.AddNode(ctx, lab.NodeOptions{Pods: 1})
	if err != nil {
		t.Fatalf("add node: %v", err)
	}
	attached := time.Since(start)
	newPod := firstPod(t, l, n.Name)
	var others []lab.PodRef
	for _, node := range l.State().NodeNames() {
		if node != n.Name {
			others = append(others, firstPod(t, l, node))
		}
	}
	const joinBound = 30 * time.Second
	took, ok := lab.WaitFor(ctx, joinBound, 100*time.Millisecond, func() bool {
		for _, p := range others {
			if l.Ping(ctx, p, newPod.IP, 1) != nil || l.Ping(ctx, newPod, p.IP, 1) != nil {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("existing pods do not reach %s's pod %s within %s of its pod being attached", n.Name, newPod.IP, joinBound)
	}
	t.Logf("node join: agent up and pod attached %s after add-node; all %d existing nodes <-> new pod reachable %s later (total %s, bound %s)",
		attached.Round(time.Millisecond), len(others), took.Round(time.Millisecond), (attached + took).Round(time.Millisecond), joinBound)

	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	obj, err := admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key := obj.Annotations[mesh.AnnotationPublicKey]
	if key == "" {
		t.Fatalf("%s has no %s annotation", n.Name, mesh.AnnotationPublicKey)
	}
	// Before removal every other node has the peer and the route: the
	// check after removal is not vacuous.
	for _, p := range others {
		if !hasPeer(t, ctx, l, p.Node, key) || !hasRoute(t, ctx, l, p.Node, n.PodCIDR) {
			t.Fatalf("%s lacks peer %s or route %s before removal", p.Node, key, n.PodCIDR)
		}
	}
	start = time.Now()
	if err := l.RemoveNode(ctx, n.Name); err != nil {
		t.Fatalf("remove node: %v", err)
	}
	took, ok = lab.WaitFor(ctx, 30*time.Second, 100*time.Millisecond, func() bool {
		for _, p := range others {
			if hasPeer(t, ctx, l, p.Node, key) || hasRoute(t, ctx, l, p.Node, n.PodCIDR) {
				return false
			}
		}
		return true
	})
	if !ok {
		for _, p := range others {
			t.Errorf("%s: peer present %v, route %s present %v", p.Node, hasPeer(t, ctx, l, p.Node, key), n.PodCIDR, hasRoute(t, ctx, l, p.Node, n.PodCIDR))
		}
		t.Fatalf("removed node's peer/route still present after %s", took)
	}
	t.Logf("node removal: peer and route gone from all %d nodes %s after remove-node", len(others), (time.Since(start)).Round(time.Millisecond))
	requireMatrix(t, ctx, l)
}

func hasPeer(t *testing.T, ctx context.Context, l *lab.Lab, node, key string) bool {
	t.Helper()
	peers, err := wgPeers(ctx, l, node)
	if err != nil {
		t.Fatalf("wg show in %s: %v", node, err)
	}
	for _, p := range peers {
		if p.PublicKey == key {
			return true
		}
	}
	return false
}

func hasRoute(t *testing.T, ctx context.Context, l *lab.Lab, node, prefix string) bool {
	t.Helper()
	out, err := l.Exec(ctx, node, "ip", "-o", "route", "show", "table", "all")
	if err != nil {
		t.Fatalf("ip route in %s: %v", node, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if f == prefix {
				return true
			}
		}
	}
	return false
}

// TestBadPublicKey: a Node whose public key annotation is garbage is left out
// of the mesh with a warning Event, while every other pair keeps working and
// no agent crashes. The node's own agent is stopped first so it cannot
// repair the annotation; started again, it re-publishes and the node rejoins.
func TestBadPublicKey(t *testing.T) {
	l := newLab(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	requireMatrix(t, ctx, l)
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	nodes := l.State().NodeNames()
	victim, healthy := nodes[2], nodes[:2]
	obj, err := admin.CoreV1().Nodes().Get(ctx, victim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldKey := obj.Annotations[mesh.AnnotationPublicKey]
	if err := l.KillAgent(victim); err != nil {
		t.Fatal(err)
	}
	const garbage = "this-is-not-a-wireguard-key!"
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, mesh.AnnotationPublicKey, garbage)
	if _, err := admin.CoreV1().Nodes().Patch(ctx, victim, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	took, ok := lab.WaitFor(ctx, 30*time.Second, 200*time.Millisecond, func() bool {
		for _, n := range healthy {
			if hasPeer(t, ctx, l, n, oldKey) {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("%s's old peer still configured on the other nodes %s after its key turned to garbage", victim, took)
	}
	t.Logf("%s excluded by the other nodes %s after the bad patch", victim, took.Round(time.Millisecond))

	// Only an Event about the bad key counts: the node also got warnings
	// at start-up, before its agent had published a key at all.
	var events []string
	_, ok = lab.WaitFor(ctx, 30*time.Second, 500*time.Millisecond, func() bool {
		events = nil
		for _, e := range nodeWarnings(t, ctx, admin, victim) {
			if strings.Contains(e, garbage) || strings.HasPrefix(e, "BadPublicKey:") {
				events = append(events, e)
			}
		}
		return len(events) > 0
	})
	if !ok {
		t.Errorf("no Warning Event about %s's bad public key within 30s; its warnings: %v", victim, nodeWarnings(t, ctx, admin, victim))
	} else {
		t.Logf("warning events on %s: %s", victim, strings.Join(events, "; "))
	}

	a, b := firstPod(t, l, healthy[0]), firstPod(t, l, healthy[1])
	if err := l.Ping(ctx, a, b.IP, 3); err != nil {
		t.Errorf("%s -> %s broken while %s is excluded: %v", a.Node, b.Node, victim, err)
	}
	if err := l.Ping(ctx, b, a.IP, 3); err != nil {
		t.Errorf("%s -> %s broken while %s is excluded: %v", b.Node, a.Node, victim, err)
	}
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	for _, n := range healthy {
		if ag := l.State().Nodes[n].Agent; ag == nil || !ag.Alive() {
			t.Errorf("agent on %s died after the bad annotation", n)
		}
	}

	// Recovery: the victim's agent publishes its key again.
	if err := l.StartAgent(victim); err != nil {
		t.Fatal(err)
	}
	took, ok = lab.WaitFor(ctx, 60*time.Second, 200*time.Millisecond, func() bool {
		return len(l.PingMatrix(ctx, 1).Failures()) == 0
	})
	if !ok {
		requireMatrix(t, ctx, l)
	}
	t.Logf("%s rejoined %s after its agent restarted", victim, took.Round(time.Millisecond))
}

// nodeWarnings lists Warning events about a Node, core and events.k8s.io.
func nodeWarnings(t *testing.T, ctx context.Context, c kubernetes.Interface, node string) []string {
	t.Helper()
	var out []string
	evs, err := c.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node,
	})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	for _, e := range evs.Items {
		if e.Type == corev1.EventTypeWarning {
			out = append(out, e.Reason+": "+e.Message)
		}
	}
	return out
}

var (
	outageCount = flag.Int("outage.count", 1, "TestAPIServerOutage: apiserver outages in a row (the reliability figures use 10)")
	outageDown  = flag.Duration("outage.down", 30*time.Second, "TestAPIServerOutage: how long each outage lasts")
	outageBound = flag.Duration("outage.bound", 30*time.Second, "TestAPIServerOutage: the join bound asserted (the issue's target is 5s; see outageJoinTarget)")
)

// outageJoinTarget is how soon a node added right after an apiserver
// outage should be reachable from and reach every old node (issue 14.2).
// The old agents' Node watch reconnects at most 2 s after the apiserver is
// back (mesh/kube retry.go, 250 ms doubling to 2 s, jittered); then an
// event, a reconcile, a greeting handshake (milliseconds). Before,
// client-go's backoff made it 47-52 s. The measurement run asserts it
// (-outage.bound=5s, docs/reliability.md). make test asserts -outage.bound
// (30 s) instead and logs the figure: with every package running in
// parallel on 2 cores one join took 15 s (the same test alone: 12 ms), a
// miss not explained yet (issue 14.2 stays open).
const outageJoinTarget = 5 * time.Second

// TestAPIServerOutage: with the apiserver gone (30 s) pod traffic keeps
// flowing; when it returns the agents pick up changes again at once: a node
// added right afterwards reaches and is reached by every old node within
// -outage.bound. Repeated -outage.count times on the same lab (each
// outage adds a node); the join times are logged with p50/p99/max:
//
//	flock /tmp/wgmesh-itest.lock go test -count=1 -run '^TestAPIServerOutage$' ./integration/e2e/ -v -args -outage.count=10 -outage.bound=5s
func TestAPIServerOutage(t *testing.T) {
	l := newLab(t, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute+time.Duration(*outageCount)*(*outageDown+time.Minute))
	defer cancel()
	requireMatrix(t, ctx, l)
	nodes := l.State().NodeNames()
	a, b := firstPod(t, l, nodes[0]), firstPod(t, l, nodes[1])

	var joins []time.Duration
	for i := range *outageCount {
		// Pings at 5/s, spanning the whole outage.
		count := int((*outageDown + 10*time.Second) / (200 * time.Millisecond))
		argv, err := l.PodCommand(a.Node, a.Pod, "ping", "-n", "-q", "-i", "0.2", "-c", strconv.Itoa(count), "-W", "1", b.IP)
		if err != nil {
			t.Fatal(err)
		}
		pinger := exec.CommandContext(ctx, argv[0], argv[1:]...)
		var pingOut bytes.Buffer
		pinger.Stdout, pinger.Stderr = &pingOut, &pingOut
		if err := pinger.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := l.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		time.Sleep(*outageDown)
		if err := l.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		t.Logf("outage %d: apiserver was down for %s", i+1, back.Sub(stopped).Round(time.Millisecond))

		// Reconnected: a node added now must be learnt through the
		// agents' watches, by every old node.
		old := podsOnePerNode(l)
		n, err := l.AddNode(ctx, lab.NodeOptions{Pods: 1})
		if err != nil {
			t.Fatalf("add node after outage: %v", err)
		}
		added := time.Now()
		c := firstPod(t, l, n.Name)
		var (
			mu   sync.Mutex
			last time.Time
			errs []error
			wg   sync.WaitGroup
		)
		reach := func(from lab.PodRef, ip string) {
			defer wg.Done()
			at, err := firstReply(ctx, l, from, ip, 60*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s/%s -> %s: %w", from.Node, from.Pod, ip, err))
			} else if at.After(last) {
				last = at
			}
		}
		for _, o := range old {
			wg.Add(2)
			go reach(o, c.IP)
			go reach(c, o.IP)
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("outage %d: %s not joined: %v", i+1, n.Name, errs)
		}
		join := max(last.Sub(added), 0)
		joins = append(joins, join)
		t.Logf("outage %d: %s (added %s after the apiserver was back) reaches and is reached by all %d old nodes %s after it was added",
			i+1, n.Name, added.Sub(back).Round(time.Millisecond), len(old), join.Round(time.Millisecond))
		if join > outageJoinTarget {
			t.Logf("outage %d: the join took longer than the %s target", i+1, outageJoinTarget)
		}
		if join > *outageBound {
			t.Errorf("outage %d: %s joined the old nodes after %s, want at most %s", i+1, n.Name, join.Round(time.Millisecond), *outageBound)
		}

		_ = pinger.Wait()
		po := pingout.Parse(pingOut.String())
		if !po.Summary {
			t.Fatalf("no ping summary:\n%s", pingOut.String())
		}
		sent, recv := po.Sent, po.Received
		t.Logf("outage %d: pod traffic during the outage: %d/%d echo replies", i+1, recv, sent)
		if sent < count*3/4 || sent-recv > sent/100 {
			t.Errorf("outage %d: pod traffic disturbed by the apiserver outage: %d of %d lost", i+1, sent-recv, sent)
		}
		if err := l.Load(); err != nil {
			t.Fatal(err)
		}
		for _, o := range old {
			if ag := l.State().Nodes[o.Node].Agent; ag == nil || !ag.Alive() {
				t.Errorf("outage %d: agent on %s exited during the apiserver outage", i+1, o.Node)
			}
		}
	}
	slices.Sort(joins)
	q := func(p float64) time.Duration { return joins[int(math.Ceil(p*float64(len(joins))))-1] }
	t.Logf("join after an apiserver outage (%s each), %d outages: p50 %s, p99 %s, max %s", *outageDown, len(joins),
		q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond), joins[len(joins)-1].Round(time.Millisecond))
}

// podsOnePerNode returns the first pod of every node.
func podsOnePerNode(l *lab.Lab) []lab.PodRef {
	var out []lab.PodRef
	for _, n := range l.State().NodeNames() {
		if ps := podsByNode(l)[n]; len(ps) > 0 {
			out = append(out, ps[0])
		}
	}
	return out
}

// firstReply pings ip from a pod every 50 ms until the first echo reply
// and returns when that reply arrived (ping's own timestamp), so the
// figure does not depend on how often anyone polls. One ping run lasts
// until a reply, an error (e.g. the fail-closed "unreachable" route before
// the agent routes the new node) or 1 s; then the next starts.
func firstReply(ctx context.Context, l *lab.Lab, from lab.PodRef, ip string, timeout time.Duration) (time.Time, error) {
	argv, err := l.PodCommand(from.Node, from.Pod, "ping", "-D", "-n", "-c", "1", "-i", "0.05", "-W", "1", "-w", "1", ip)
	if err != nil {
		return time.Time{}, err
	}
	re := regexp.MustCompile(`(?m)^\[(\d+)\.(\d+)\] \d+ bytes from`)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
		if m := re.FindStringSubmatch(string(out)); m != nil {
			sec, _ := strconv.ParseInt(m[1], 10, 64)
			usec, _ := strconv.ParseInt(m[2], 10, 64)
			return time.Unix(sec, usec*1000), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return time.Time{}, fmt.Errorf("no reply within %s", timeout)
}
