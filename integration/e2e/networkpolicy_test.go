package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/integration/internal/echo"
	"github.com/wgmesh/wgmesh/integration/lab"
)

// The test binary doubles as the TCP echo server and client (internal/echo)
// run inside the lab's pods (the pods have no tools of their own): with
// npHelperEnv set it does that and exits before TestMain.
const npHelperEnv = "WGMESH_E2E_NP_HELPER"

func init() {
	switch os.Getenv(npHelperEnv) {
	case "":
		return
	case "serve":
		os.Exit(echo.Serve(os.Args[1:]))
	case "connect":
		os.Exit(echo.Connect(os.Args[1:]))
	}
	os.Exit(2)
}

// npPod is one pod of the policy test.
type npPod struct {
	node, name, ns, ip string
}

type npEnv struct {
	t       *testing.T
	l       *lab.Lab
	admin   kubernetes.Interface
	exe     string
	pods    map[string]npPod
	n1, n2  string
	servers []*exec.Cmd
}

// TestNetworkPolicy runs the NetworkPolicy checks on one 2-node lab whose
// pods carry Pod objects (namespace, labels, named ports) the agents read:
//
//	node1: client (ns np-a, team=a), other (ns np-b, team=b), local (ns np-srv, app=server)
//	node2: server (ns np-srv, app=server, port http=8080)
//
// Traffic to "server" crosses the tunnel, so its policy is decided by
// node2's agent; "local" shares node1's bridge with the clients.
func TestNetworkPolicy(t *testing.T) {
	l := newLab(t, 2, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
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
	for ns, team := range map[string]string{"np-a": "a", "np-b": "b", "np-srv": "srv"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"team": team}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	httpPort := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
	e.addPod(ctx, "client", e.n1, lab.PodOptions{Namespace: "np-a", Labels: map[string]string{"app": "client"}})
	e.addPod(ctx, "other", e.n1, lab.PodOptions{Namespace: "np-b", Labels: map[string]string{"app": "client"}})
	e.addPod(ctx, "local", e.n1, lab.PodOptions{Namespace: "np-srv", Labels: map[string]string{"app": "server"}, Ports: httpPort})
	e.addPod(ctx, "server", e.n2, lab.PodOptions{Namespace: "np-srv", Labels: map[string]string{"app": "server"}, Ports: httpPort})
	for _, s := range []string{"local", "server"} {
		e.serve(s, "8080", "8081")
	}
	srv, loc := e.pods["server"].ip, e.pods["local"].ip

	t.Run("OpenWithoutPolicies", func(t *testing.T) {
		e.expect(t, "client", srv, 8080, true)
		e.expect(t, "other", srv, 8080, true)
		e.expect(t, "client", loc, 8080, true)
		e.expect(t, "client", srv, 8081, true)
	})

	t.Run("DefaultDenyIngressNamespace", func(t *testing.T) {
		took := e.apply(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "np-srv", Name: "default-deny"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		}, "client", srv, 8080, false)
		t.Logf("default deny took effect for new connections after %s", took)
		e.expect(t, "client", loc, 8080, false) // same node, bridged
		e.expect(t, "other", srv, 8080, false)
		e.ping(t, "client", srv, false)
		// Only np-srv is isolated: client still reaches other.
		e.ping(t, "other", e.pods["client"].ip, true)
	})

	t.Run("DecidedOnTheServersNode", func(t *testing.T) {
		// node2 holds the server's ingress entry; node1 has the local
		// pod's, and neither has the (unisolated) clients'.
		out2 := e.nft(t, e.n2)
		out1 := e.nft(t, e.n1)
		if !strings.Contains(out2, srv+" : jump") || strings.Contains(out1, srv+" : jump") {
			t.Errorf("server %s should be enforced on %s only:\n%s:\n%s\n%s:\n%s", srv, e.n2, e.n2, out2, e.n1, out1)
		}
		if !strings.Contains(out1, loc+" : jump") || strings.Contains(out1, e.pods["client"].ip+" : jump") {
			t.Errorf("%s should enforce the local server %s and not the client:\n%s", e.n1, loc, out1)
		}
	})

	t.Run("AllowFromLabelledNamespace", func(t *testing.T) {
		took := e.apply(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "np-srv", Name: "from-team-a"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}},
				}}},
			},
		}, "client", srv, 8080, true)
		t.Logf("allow took effect after %s", took)
		e.expect(t, "client", loc, 8080, true)
		e.expect(t, "other", srv, 8080, false)
		e.expect(t, "other", loc, 8080, false)
		e.ping(t, "client", srv, true)
		e.delete(ctx, "np-srv", "from-team-a")
	})

	t.Run("AllowNamedPortOnly", func(t *testing.T) {
		http := intstr.FromString("http")
		e.apply(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "np-srv", Name: "http-only"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}}},
			},
		}, "other", srv, 8080, true)
		e.expect(t, "client", srv, 8080, true)
		e.expect(t, "client", srv, 8081, false)
		e.expect(t, "other", loc, 8080, true)
		e.expect(t, "other", loc, 8081, false)
		e.ping(t, "client", srv, false)
		e.delete(ctx, "np-srv", "http-only")
		e.delete(ctx, "np-srv", "default-deny")
		e.waitFor("client", srv, 8081, true, time.Now())
	})

	t.Run("EgressDenyToIPBlock", func(t *testing.T) {
		e.apply(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "np-a", Name: "not-the-server"},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{srv + "/32"}}},
				}}},
			},
		}, "client", srv, 8080, false)
		e.expect(t, "client", loc, 8080, true) // outside the excepted block
		e.expect(t, "other", srv, 8080, true)  // np-b is not isolated
		// Replies to connections the client accepts still leave it.
		e.serve("client", "8080")
		e.expect(t, "other", e.pods["client"].ip, 8080, true)
	})

	t.Run("RemovingThePolicyRestoresTraffic", func(t *testing.T) {
		start := time.Now()
		e.delete(ctx, "np-a", "not-the-server")
		took := e.waitFor("client", srv, 8080, true, start)
		t.Logf("traffic restored after %s", took)
		e.expect(t, "client", loc, 8080, true)
		for _, n := range []string{e.n1, e.n2} {
			if out := e.nft(t, n); strings.Contains(out, " : jump") {
				t.Errorf("%s still enforces something after every policy is gone:\n%s", n, out)
			}
		}
	})
}

func (e *npEnv) addPod(ctx context.Context, name, node string, opt lab.PodOptions) {
	e.t.Helper()
	p, err := e.l.AddPodWith(ctx, node, opt)
	if err != nil {
		e.t.Fatalf("add pod %s: %v", name, err)
	}
	e.pods[name] = npPod{node: node, name: p.Name, ns: opt.Namespace, ip: p.IP}
}

func (e *npEnv) serve(pod string, ports ...string) {
	e.t.Helper()
	p := e.pods[pod]
	argv := []string{e.exe}
	for _, port := range ports {
		argv = append(argv, "tcp:"+port)
	}
	argv, err := e.l.PodCommand(p.node, p.name, argv...)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), npHelperEnv+"=serve")
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == echo.Ready {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			e.t.Fatalf("echo server in %s exited", pod)
		}
	case <-time.After(10 * time.Second):
		e.t.Fatalf("echo server in %s not ready", pod)
	}
}

// reach runs one connection attempt from pod to ip:port.
func (e *npEnv) reach(from, ip string, port int, timeout time.Duration) bool {
	p := e.pods[from]
	argv, err := e.l.PodCommand(p.node, p.name, e.exe, "tcp", ip, strconv.Itoa(port), strconv.Itoa(int(timeout/time.Millisecond)))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), npHelperEnv+"=connect")
	return cmd.Run() == nil
}

func (e *npEnv) expect(t *testing.T, from, ip string, port int, want bool) {
	t.Helper()
	got := e.reach(from, ip, port, 700*time.Millisecond)
	if !got && want {
		// A loaded machine can delay an allowed exchange past the
		// timeout; a denied one never turns into an echo.
		got = e.reach(from, ip, port, 700*time.Millisecond)
	}
	if got != want {
		t.Errorf("%s -> %s:%d reachable=%v, want %v", from, ip, port, got, want)
	}
}

func (e *npEnv) ping(t *testing.T, from, ip string, want bool) {
	t.Helper()
	p := e.pods[from]
	_, err := e.l.PodExec(context.Background(), p.node, p.name, "ping", "-c1", "-W1", ip)
	if err != nil && want {
		_, err = e.l.PodExec(context.Background(), p.node, p.name, "ping", "-c1", "-W1", ip)
	}
	if got := err == nil; got != want {
		t.Errorf("ping %s -> %s ok=%v, want %v", from, ip, got, want)
	}
}

// apply creates the policy and returns how long until a new connection
// from pod to ip:port shows the expected outcome; more than a second fails
// the test.
func (e *npEnv) apply(ctx context.Context, np *networkingv1.NetworkPolicy, from, ip string, port int, want bool) time.Duration {
	e.t.Helper()
	start := time.Now()
	if _, err := e.admin.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create policy %s/%s: %v", np.Namespace, np.Name, err)
	}
	return e.waitFor(from, ip, port, want, start)
}

// waitFor probes until the outcome is want and returns an upper bound of
// when the change took effect: the first probe showing it sent its SYN
// before it ended (before its timeout began, for a refused connection), and
// the rules were in place by then.
func (e *npEnv) waitFor(from, ip string, port int, want bool, start time.Time) time.Duration {
	e.t.Helper()
	const timeout = 300 * time.Millisecond
	for {
		if e.reach(from, ip, port, timeout) == want {
			took := time.Since(start)
			if !want {
				took -= timeout
			}
			if took > time.Second {
				e.t.Errorf("%s -> %s:%d became reachable=%v only after %s (want within 1s)", from, ip, port, want, took)
			}
			return took
		}
		if time.Since(start) > 15*time.Second {
			e.t.Fatalf("%s -> %s:%d never became reachable=%v", from, ip, port, want)
		}
	}
}

func (e *npEnv) delete(ctx context.Context, ns, name string) {
	e.t.Helper()
	if err := e.admin.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("delete policy %s/%s: %v", ns, name, err)
	}
}

// nft lists the policy maps of a node (where the agent programs them).
func (e *npEnv) nft(t *testing.T, node string) string {
	t.Helper()
	out, err := e.l.Exec(context.Background(), node, "nft", "list", "table", "inet", "wgmesh-policy")
	if err != nil {
		t.Fatalf("nft on %s: %v\n%s", node, err, out)
	}
	return string(out)
}
