package e2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/lab"
)

// newKubeletLab is newLab for the kubelet mode: real containerd, kubelet and
// kube-proxy per node, wgmesh installed by kubectl apply -k
// deploy/overlays/lab.
func newKubeletLab(t *testing.T, nodes, pods int) *lab.Lab {
	t.Helper()
	// Up takes ~25 s for 3 nodes on an idle 2-core box; 8 minutes leaves
	// room for a loaded CI machine importing images into three containerds.
	return upLab(t, "k", lab.UpOptions{Nodes: nodes, Pods: pods, Kubelet: true}, 8*time.Minute)
}

// TestRealNodes runs wgmesh under the real node stack: kubelets register
// the nodes, the shipped DaemonSet installs the plugin and turns them Ready,
// an agnhost Deployment spreads over the nodes behind ClusterIP, NodePort
// and headless Services (kube-proxy, nftables), and the upstream e2e suite's
// "Networking Granular Checks: Pods" pass. The underlay is captured for the
// whole test: no frame may carry a pod address.
func TestRealNodes(t *testing.T) {
	l := newKubeletLab(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	ns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"nsenter", "--net=/run/netns/" + ns, "--"}, "-i", br, "-s", "128", "-w", pcap))

	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	requireMatrix(t, ctx, l)
	backends := deployEcho(t, ctx, c)
	svc := createEchoServices(t, ctx, c)

	t.Run("ServicesAcrossNodes", func(t *testing.T) { testServicesAcrossNodes(t, ctx, l, backends, svc) })
	t.Run("Hairpin", func(t *testing.T) { testHairpin(t, ctx, l, c) })
	t.Run("NodePortFromAnotherNode", func(t *testing.T) { testNodePort(t, ctx, l, backends, svc) })
	t.Run("NodePortToThirdNode", func(t *testing.T) { testNodePortToThirdNode(t, ctx, l, c) })
	t.Run("Headless", func(t *testing.T) { testHeadless(t, ctx, l, c, backends) })
	t.Run("APIServerReachesPods", func(t *testing.T) { testAPIServerReachesPods(t, ctx, c, backends) })
	t.Run("RolloutKeepsFlows", func(t *testing.T) { testRolloutKeepsFlows(t, ctx, l) })
	t.Run("UpstreamGranularChecks", func(t *testing.T) {
		runUpstreamE2E(t, ctx, l, `Networking Granular Checks: Pods`, `Feature:SCTPConnectivity`, 10*time.Minute)
	})

	capt.stop()
	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	podNet := netip.MustParsePrefix(podCIDRs)
	var bad []string
	for i, f := range frames {
		switch {
		case f.EtherType == 0x0806 && (podNet.Contains(f.ARPSender) || podNet.Contains(f.ARPTarget)):
			bad = append(bad, fmt.Sprintf("frame %d: ARP for pod address %s/%s", i, f.ARPSender, f.ARPTarget))
		case f.EtherType == 0x0800 && (podNet.Contains(f.Src) || podNet.Contains(f.Dst)):
			bad = append(bad, fmt.Sprintf("frame %d: IPv4 %s -> %s proto %d", i, f.Src, f.Dst, f.Proto))
		}
	}
	t.Logf("underlay capture across the real-node test: %d frames, %d with a pod address", len(frames), len(bad))
	if len(frames) == 0 {
		t.Error("the underlay capture saw no frame at all: the capture is broken")
	}
	if len(bad) > 0 {
		t.Errorf("%d underlay frames carry a pod address, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
}

// echoBackend is one pod of the echo Deployment; IPv6 in a dual-stack lab.
type echoBackend struct{ Name, Node, IP, IPv6 string }

type echoServices struct {
	ClusterIP string
	NodePort  int32
}

const echoNS = "wgmesh-e2e"

func deployEcho(t *testing.T, ctx context.Context, c kubernetes.Interface) []echoBackend {
	t.Helper()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: echoNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(3)
	labels := map[string]string{"app": "echo"}
	grace := int64(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: echoNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					// One per node: the Service checks need backends on
					// every node.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "agnhost", Image: lab.AgnhostImage, ImagePullPolicy: corev1.PullNever,
						Args:  []string{"netexec", "--http-port=8080", "--udp-port=8081"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 2,
						},
					}},
				},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(echoNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Image is local and pinned; 3 minutes covers sandbox setup on a loaded box.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pods, err := c.CoreV1().Pods(echoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			t.Fatal(err)
		}
		var out []echoBackend
		nodes := map[string]bool{}
		for _, p := range pods.Items {
			ready := false
			for _, cond := range p.Status.Conditions {
				ready = ready || (cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue)
			}
			if ready && p.Status.PodIP != "" {
				b := echoBackend{Name: p.Name, Node: p.Spec.NodeName}
				// status.podIPs starts with the node's primary family
				// (IPv6 on a node whose first node IP is IPv6).
				for _, ip := range p.Status.PodIPs {
					if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
						b.IP = ip.IP
					} else if err == nil {
						b.IPv6 = ip.IP
					}
				}
				out = append(out, b)
				nodes[p.Spec.NodeName] = true
			}
		}
		if len(out) == 3 && len(nodes) == 3 {
			t.Logf("echo backends: %+v", out)
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("echo Deployment: %d ready pods on %d nodes after 3m, want 3 on 3", len(out), len(nodes))
		}
		time.Sleep(time.Second)
	}
}

func createEchoServices(t *testing.T, ctx context.Context, c kubernetes.Interface) echoServices {
	t.Helper()
	port := []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}
	sel := map[string]string{"app": "echo"}
	ci, err := c.CoreV1().Services(echoNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: port},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np, err := c.CoreV1().Services(echoNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-nodeport"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: sel, Ports: port},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Services(echoNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: sel, Ports: port},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return echoServices{ClusterIP: ci.Spec.ClusterIP, NodePort: np.Spec.Ports[0].NodePort}
}

// curlUntil runs argv (a curl) until pred accepts its output or d passes
// (kube-proxy programs a new Service within seconds; d covers a loaded box).
func curlUntil(ctx context.Context, d time.Duration, run func() ([]byte, error), pred func(string) bool) (string, error) {
	deadline := time.Now().Add(d)
	for {
		out, err := run()
		s := strings.TrimSpace(string(out))
		if err == nil && pred(s) {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("no acceptable answer within %s (last %q, %v)", d, s, err)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// testServicesAcrossNodes: from the lab pod on every node, the ClusterIP
// Service reaches backends on the other nodes, and every backend sees the
// client's own pod IP (no NAT between pods).
func testServicesAcrossNodes(t *testing.T, ctx context.Context, l *lab.Lab, backends []echoBackend, svc echoServices) {
	nodeOf := map[string]string{}
	for _, b := range backends {
		nodeOf[b.Name] = b.Node
	}
	for _, client := range l.Pods() {
		seen := map[string]bool{}
		url := "http://" + svc.ClusterIP + "/hostname"
		// Random backend choice: 60 tries miss a given one of three with
		// probability (2/3)^60 ~ 3e-11.
		for i := 0; i < 60 && len(seen) < 3; i++ {
			out, err := l.PodExec(ctx, client.Node, client.Pod, "curl", "-sS", "-m", "3", url)
			if err != nil {
				continue
			}
			seen[strings.TrimSpace(string(out))] = true
		}
		remote := 0
		for name := range seen {
			if n, ok := nodeOf[name]; ok && n != client.Node {
				remote++
			}
		}
		if remote < 2 {
			t.Errorf("%s/%s via ClusterIP %s reached %v; want the backends on both other nodes", client.Node, client.Pod, svc.ClusterIP, seen)
		}
		for i := 0; i < 6; i++ {
			out, err := l.PodExec(ctx, client.Node, client.Pod, "curl", "-sS", "-m", "3", "http://"+svc.ClusterIP+"/clientip")
			if err != nil {
				t.Errorf("%s/%s clientip via Service: %v %s", client.Node, client.Pod, err, out)
				continue
			}
			host, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":")
			if host != client.IP {
				t.Errorf("%s/%s (pod IP %s): the backend saw client %q: NAT between pods", client.Node, client.Pod, client.IP, host)
			}
		}
	}
}

// testAPIServerReachesPods: the apiserver's pod proxy (which the upstream
// specs use to check pods answer) reaches a pod on every node, and the pod
// sees the control plane's tunnel address: the request came through the
// control plane's WireGuard peer (lab/controlpeer.go), not over the underlay
// in plaintext (the capture around the whole test checks that too).
func testAPIServerReachesPods(t *testing.T, ctx context.Context, c kubernetes.Interface, backends []echoBackend) {
	for _, b := range backends {
		var got string
		// The first request waits for the control plane's handshake with
		// the pod's node: one round trip, 30 s for a loaded box.
		_, err := curlUntil(ctx, 30*time.Second, func() ([]byte, error) {
			return c.CoreV1().Pods(echoNS).ProxyGet("http", b.Name, "8080", "hostname", nil).DoRaw(ctx)
		}, func(s string) bool { got = s; return s == b.Name })
		if err != nil {
			t.Errorf("apiserver proxy to %s (%s on %s): %v", b.Name, b.IP, b.Node, err)
			continue
		}
		out, err := c.CoreV1().Pods(echoNS).ProxyGet("http", b.Name, "8080", "clientip", nil).DoRaw(ctx)
		host, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":")
		if err != nil || host != lab.ControlPlaneTunnelIP {
			t.Errorf("pod %s on %s saw the apiserver as %q (%v), want the control plane's tunnel address %s", b.Name, b.Node, out, err, lab.ControlPlaneTunnelIP)
			continue
		}
		t.Logf("apiserver -> %s on %s: %q, seen from %s", b.Name, b.Node, got, host)
	}
}

// testHairpin: a pod reaches itself through its own Service.
func testHairpin(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface) {
	client := l.Pods()[0]
	kubeName := client.Node + "-" + client.Pod
	svc, err := c.CoreV1().Services(lab.PodNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hairpin"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{lab.LabPodLabel: client.Node},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := curlUntil(ctx, time.Minute, func() ([]byte, error) {
		return l.PodExec(ctx, client.Node, client.Pod, "curl", "-sS", "-m", "3", "http://"+svc.Spec.ClusterIP+"/hostname")
	}, func(s string) bool { return s == kubeName })
	if err != nil {
		t.Errorf("hairpin: %s/%s through its own Service %s: %v", client.Node, client.Pod, svc.Spec.ClusterIP, err)
		return
	}
	t.Logf("hairpin: %s answered itself through %s", out, svc.Spec.ClusterIP)
}

// testNodePort: every node's NodePort answers from another node's host
// network namespace.
func testNodePort(t *testing.T, ctx context.Context, l *lab.Lab, backends []echoBackend, svc echoServices) {
	nodePortsAnswer(t, ctx, l, backends, svc.NodePort, false)
}

// nodePortsAnswer: every node's NodePort port answers, on the node's
// underlay address of the family (IPv6 when ipv6), from the next node's
// host network namespace, with one of the backends' names.
func nodePortsAnswer(t *testing.T, ctx context.Context, l *lab.Lab, backends []echoBackend, port int32, ipv6 bool) {
	names := map[string]bool{}
	for _, b := range backends {
		names[b.Name] = true
	}
	nodes := l.State().NodeNames()
	for i, target := range nodes {
		from := nodes[(i+1)%len(nodes)]
		url := fmt.Sprintf("http://%s:%d/hostname", nodeURLHost(l, target, ipv6), port)
		out, err := curlUntil(ctx, time.Minute, func() ([]byte, error) {
			return l.Exec(ctx, from, "curl", "-g", "-sS", "-m", "3", url)
		}, func(s string) bool { return names[s] })
		if err != nil {
			t.Errorf("NodePort %s from %s: %v", url, from, err)
			continue
		}
		t.Logf("NodePort %s from %s: answered by %s", url, from, out)
	}
}

// nodeURLHost is node's underlay address of the family, as a URL host.
func nodeURLHost(l *lab.Lab, node string, ipv6 bool) string {
	if ipv6 {
		return urlHost(l.State().Nodes[node].UnderlayIPv6)
	}
	return l.State().Nodes[node].UnderlayIP
}

// testNodePortToThirdNode: a client on node A reaches node B's NodePort
// whose only backend runs on node C. kube-proxy on B masquerades the
// request into the mesh; its source must be B's tunnel address (the network
// address of B's podCIDR, see mesh/dataplane tunnelAddrsFor), which C's
// WireGuard accepts from B: with the underlay address as source C dropped
// it (found by the upstream Services tests).
func testNodePortToThirdNode(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface) {
	nodePortToThirdNode(t, ctx, l, c, false)
}

// nodePortToThirdNode is testNodePortToThirdNode in one family: with ipv6
// the Service is RequireDualStack, A asks B's IPv6 address and C must see
// B's IPv6 tunnel address (the network address of B's IPv6 podCIDR).
func nodePortToThirdNode(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface, ipv6 bool) {
	nodes := l.State().NodeNames()
	if len(nodes) < 3 {
		t.Fatalf("need 3 nodes, have %v", nodes)
	}
	from, target, backendNode := nodes[0], nodes[1], nodes[2]
	var backend lab.PodRef
	for _, p := range l.Pods() {
		if p.Node == backendNode {
			backend = p
			break
		}
	}
	if backend.Pod == "" {
		t.Fatalf("no lab pod on %s", backendNode)
	}
	family := "IPv4"
	spec := corev1.ServiceSpec{
		Type:     corev1.ServiceTypeNodePort,
		Selector: map[string]string{lab.LabPodLabel: backendNode},
		Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
	}
	name := "nodeport-third"
	if ipv6 {
		family, name = "IPv6", "nodeport-third-v6"
		req := corev1.IPFamilyPolicyRequireDualStack
		spec.IPFamilyPolicy = &req
	}
	svc, err := c.CoreV1().Services(lab.PodNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tn, err := c.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var tunnel netip.Addr
	for _, s := range tn.Spec.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is6() == ipv6 {
			tunnel = p.Masked().Addr()
		}
	}
	if !tunnel.IsValid() {
		t.Fatalf("node %s has no %s podCIDR: %v", target, family, tn.Spec.PodCIDRs)
	}
	base := fmt.Sprintf("http://%s:%d", nodeURLHost(l, target, ipv6), svc.Spec.Ports[0].NodePort)
	want := backend.Node + "-" + backend.Pod
	out, err := curlUntil(ctx, time.Minute, func() ([]byte, error) {
		return l.Exec(ctx, from, "curl", "-g", "-sS", "-m", "3", base+"/hostname")
	}, func(s string) bool { return s == want })
	if err != nil {
		t.Fatalf("NodePort %s from %s to the backend on %s: %v", base, from, backendNode, err)
	}
	ip, err := l.Exec(ctx, from, "curl", "-g", "-sS", "-m", "3", base+"/clientip")
	if err != nil {
		t.Fatalf("clientip via %s: %v %s", base, err, ip)
	}
	host := clientHost(string(ip))
	if a, err := netip.ParseAddr(host); err != nil || a != tunnel {
		t.Errorf("the backend on %s saw client %q; want %s's %s tunnel address %s", backendNode, host, target, family, tunnel)
	}
	t.Logf("NodePort %s from %s: answered by %s on %s, client seen as %s", base, from, out, backendNode, host)
}

// testHeadless: the headless Service's EndpointSlices list exactly the
// backends' pod IPs (no cluster DNS in the lab to resolve them), and every
// one of them answers a pod on another node directly.
func testHeadless(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface, backends []echoBackend) {
	want := map[string]bool{}
	for _, b := range backends {
		want[b.IP] = true
	}
	var got map[string]bool
	deadline := time.Now().Add(time.Minute)
	for {
		got = map[string]bool{}
		slices, err := c.DiscoveryV1().EndpointSlices(echoNS).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=echo-headless"})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				for _, a := range e.Addresses {
					got[a] = true
				}
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("headless Service endpoints %v, want the backends %v", got, want)
	}
	for _, b := range backends {
		for _, client := range l.Pods() {
			if client.Node == b.Node {
				continue
			}
			out, err := l.PodExec(ctx, client.Node, client.Pod, "curl", "-sS", "-m", "3", "http://"+b.IP+":8080/hostname")
			if err != nil || strings.TrimSpace(string(out)) != b.Name {
				t.Errorf("headless endpoint %s (%s on %s) from %s/%s: %q %v", b.IP, b.Name, b.Node, client.Node, client.Pod, out, err)
			}
			break
		}
	}
}

var ginkgoSummary = regexp.MustCompile(`(?m)^(SUCCESS!|FAIL!) -- (\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)

// runUpstreamE2E runs the upstream e2e.test (built from k8s.io/kubernetes in
// the tools module) against the lab from the underlay namespace, focused on
// focus, and fails t unless it passes with at least one spec run.
func runUpstreamE2E(t *testing.T, ctx context.Context, l *lab.Lab, focus, skip string, timeout time.Duration) {
	ns, _ := l.Underlay()
	report := t.TempDir()
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Minute)
	defer cancel()
	args := []string{"--net=/run/netns/" + ns, "--", filepath.Join(binDir, "e2e.test"),
		"--kubeconfig=" + l.AdminKubeconfig(),
		"--ginkgo.focus=" + focus,
		"--ginkgo.no-color",
		"--ginkgo.timeout=" + timeout.String(),
		"--report-dir=" + report,
	}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Dir = report
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(filepath.Join(report, "e2e.log"), out, 0o644)
	m := ginkgoSummary.FindSubmatch(out)
	if m == nil {
		t.Fatalf("e2e.test (%v) printed no summary after %s:\n%s", err, time.Since(start).Round(time.Second), tail(string(out), 60))
	}
	t.Logf("upstream e2e %q: %s passed, %s failed, %s skipped in %s", focus, m[2], m[3], m[5], time.Since(start).Round(time.Second))
	if err != nil || string(m[1]) != "SUCCESS!" || string(m[2]) == "0" {
		var fails []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "[FAIL]") {
				fails = append(fails, strings.TrimSpace(line))
			}
		}
		t.Errorf("upstream e2e %q failed (%v):\n%s\n---- last lines ----\n%s", focus, err, strings.Join(fails, "\n"), tail(string(out), 40))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testRolloutKeepsFlows: an established TCP connection between pods on two
// nodes survives `kubectl rollout restart` of the wgmesh DaemonSet (every
// agent replaced, one node at a time) and still carries data afterwards.
func testRolloutKeepsFlows(t *testing.T, ctx context.Context, l *lab.Lab) {
	pods := l.Pods()
	var srv, cli lab.PodRef
	for _, p := range pods {
		if srv.Pod == "" {
			srv = p
		} else if p.Node != srv.Node {
			cli = p
			break
		}
	}
	if cli.Pod == "" {
		t.Fatalf("need pods on two nodes, have %v", pods)
	}
	srvArgv, err := l.PodCommand(srv.Node, srv.Pod, "nc.openbsd", "-l", "9000")
	if err != nil {
		t.Fatal(err)
	}
	server := startLineCmd(t, append([]string{"sh", "-c", `echo listening; exec "$@"`, "sh"}, srvArgv...), "listening")
	cliArgv, err := l.PodCommand(cli.Node, cli.Pod, "nc.openbsd", srv.IP, "9000")
	if err != nil {
		t.Fatal(err)
	}
	// The server prints "listening" just before nc binds, so the first
	// connect can be refused on a loaded box: the client then exits at
	// once. Start clients until one carries the first line (bounded 30 s).
	var (
		client     *exec.Cmd
		stdin      io.WriteCloser
		clientOut  *netnstest.SyncBuffer
		clientDone chan struct{}
	)
	startClient := func() {
		t.Helper()
		client = exec.Command(cliArgv[0], cliArgv[1:]...)
		var err error
		if stdin, err = client.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		clientOut = &netnstest.SyncBuffer{}
		client.Stdout, client.Stderr = clientOut, clientOut
		if err := client.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		c := client
		go func() { _ = c.Wait(); close(done) }()
		clientDone = done
		in := stdin
		t.Cleanup(func() {
			in.Close()
			_ = c.Process.Kill()
			<-done
		})
	}
	arrived := func(line string, within time.Duration) error {
		deadline := time.Now().Add(within)
		for !strings.Contains(server.output(), line) {
			select {
			case <-clientDone:
				return fmt.Errorf("the flow's client exited before %q arrived: %s; server: %s", line, clientOut.String(), server.output())
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%q did not arrive within %s; server: %s", line, within, server.output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	send := func(line string) {
		t.Helper()
		if _, err := fmt.Fprintln(stdin, line); err != nil {
			t.Fatalf("write %q to the flow: %v (client: %s)", line, err, clientOut.String())
		}
		if err := arrived(line, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for connectDeadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		startClient()
		_, werr := fmt.Fprintln(stdin, "before-rollout")
		err := werr
		if err == nil {
			err = arrived("before-rollout", 30*time.Second)
		}
		if err == nil {
			break
		}
		if time.Now().After(connectDeadline) {
			t.Fatalf("no flow to %s:9000 within 30 s: %v", srv.IP, err)
		}
		t.Logf("flow not up yet, reconnecting: %v", err)
	}
	start := time.Now()
	rs := l.KubectlCommand("-n", lab.AgentNamespace, "rollout", "restart", "ds/wgmesh-agent")
	if out, err := exec.CommandContext(ctx, rs[0], rs[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("rollout restart: %v %s", err, out)
	}
	// Three nodes, one at a time, each the old agent's exit plus the new
	// one's start and 5 s minReadySeconds: ~1 minute idle; 5 on a loaded box.
	st := l.KubectlCommand("-n", lab.AgentNamespace, "rollout", "status", "ds/wgmesh-agent", "--timeout=5m")
	if out, err := exec.CommandContext(ctx, st[0], st[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("rollout status: %v %s", err, out)
	}
	t.Logf("DaemonSet rollout restart done in %s", time.Since(start).Round(time.Second))
	send("after-rollout")
	select {
	case <-clientDone:
		t.Fatalf("the flow's client exited: %s", clientOut.String())
	default:
	}
	t.Logf("TCP flow %s/%s -> %s/%s:9000 carried data before and after the rollout", cli.Node, cli.Pod, srv.Node, srv.Pod)
}
