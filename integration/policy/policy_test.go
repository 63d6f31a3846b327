package policy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/echo"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh/policy"
	"github.com/wgmesh/wgmesh/mesh/policy/policytest"
)

// topo is a node with the pod bridge and pods a, b, c (10.244.1.2-4), and
// a remote node routed through a veth standing in for the tunnel, whose
// pods 10.244.2.2 and 10.244.2.3 live on its loopback.
type topo struct {
	t      *testing.T
	node   *netnstest.NS
	remote *netnstest.NS
	pods   map[string]*netnstest.NS
	ips    map[string]string
	exe    string
}

const (
	bridge    = "wgmesh-br0"
	remoteIP  = "10.244.2.2"
	remoteIP2 = "10.244.2.3"
)

func newTopo(t *testing.T) *topo {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "nft", "ping", "sysctl")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := netnstest.Prefix(t)
	tp := &topo{t: t, pods: map[string]*netnstest.NS{}, ips: map[string]string{}, exe: exe}
	tp.node = netnstest.NewNS(t, p+"-node")
	tp.remote = netnstest.NewNS(t, p+"-rem")
	n := tp.node
	n.MustRun(t, "ip", "link", "add", bridge, "type", "bridge")
	n.MustRun(t, "ip", "addr", "add", "10.244.1.1/24", "dev", bridge)
	n.MustRun(t, "ip", "link", "set", bridge, "up")
	n.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for i, name := range []string{"a", "b", "c"} {
		pod := netnstest.NewNS(t, p+"-"+name)
		ip := fmt.Sprintf("10.244.1.%d", i+2)
		netnstest.Veth(t, n, "v"+p+name, netip.Prefix{}, pod, "eth0", netip.MustParsePrefix(ip+"/24"))
		n.MustRun(t, "ip", "link", "set", "v"+p+name, "master", bridge)
		// Hairpin, as the CNI plugin sets it: a pod reaching itself
		// through a Service leaves and re-enters by its own port.
		n.MustRun(t, "ip", "link", "set", "v"+p+name, "type", "bridge_slave", "hairpin", "on")
		pod.MustRun(t, "ip", "route", "add", "default", "via", "10.244.1.1")
		tp.pods[name], tp.ips[name] = pod, ip
	}
	netnstest.Veth(t, n, "t"+p, netip.MustParsePrefix("198.51.100.1/30"), tp.remote, "eth0", netip.MustParsePrefix("198.51.100.2/30"))
	n.MustRun(t, "ip", "route", "add", "10.244.2.0/24", "via", "198.51.100.2")
	tp.remote.MustRun(t, "ip", "addr", "add", remoteIP+"/32", "dev", "lo")
	tp.remote.MustRun(t, "ip", "addr", "add", remoteIP2+"/32", "dev", "lo")
	tp.remote.MustRun(t, "ip", "route", "add", "10.244.1.0/24", "via", "198.51.100.1", "src", remoteIP)
	tp.pods["remote"], tp.ips["remote"] = tp.remote, remoteIP
	// Start from "br_netfilter host-wide off" in this namespace, so the
	// dataplane has to switch it on for the bridge itself.
	n.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
	return tp
}

// serve starts the echo helper in pod on the given "tcp:PORT"/"udp:PORT".
func (tp *topo) serve(pod string, ports ...string) {
	tp.t.Helper()
	proc := tp.pods[pod].Start(tp.t, "serve-"+pod, []string{"POLICY_HELPER=serve"}, append([]string{tp.exe}, ports...)...)
	netnstest.Eventually(tp.t, 5*time.Second, "echo helper in "+pod+" ready", func() error {
		if strings.Contains(proc.Output(), echo.Ready) {
			return nil
		}
		if proc.Exited() {
			tp.t.Fatalf("helper in %s exited: %s", pod, proc.Output())
		}
		return fmt.Errorf("output so far %q", proc.Output())
	})
}

// reach reports whether from gets an echo from ip:port over proto.
func (tp *topo) reach(from, proto, ip string, port int) bool {
	tp.t.Helper()
	cmd := tp.pods[from].Command(context.Background(), tp.exe, proto, ip, fmt.Sprint(port), "700")
	cmd.Env = append(os.Environ(), "POLICY_HELPER=connect")
	return cmd.Run() == nil
}

func (tp *topo) ping(from, ip string) bool {
	_, err := tp.pods[from].Run("ping", "-c1", "-W1", ip)
	return err == nil
}

type probe struct {
	from, proto, ip string
	port            int
	want            bool
}

func (tp *topo) expect(probes ...probe) {
	tp.t.Helper()
	for _, p := range probes {
		try := func() bool {
			if p.proto == "icmp" {
				return tp.ping(p.from, p.ip)
			}
			return tp.reach(p.from, p.proto, p.ip, p.port)
		}
		got := try()
		// A loaded machine can delay an allowed exchange past the
		// timeout; one retry tells that from a drop (a denied probe
		// never turns into an echo).
		if !got && p.want {
			got = try()
		}
		if got != p.want {
			tp.t.Errorf("%s -> %s %s:%d: reachable=%v, want %v", p.from, p.proto, p.ip, p.port, got, p.want)
		}
	}
}

// input is the cluster the compiler sees: a, b, c on node n1 (this one),
// and the remote pods on n2.
func (tp *topo) input(policies ...policy.Policy) policy.Input {
	in := policy.Input{Node: "n1", Namespaces: []policy.Namespace{{Name: "prod", Labels: map[string]string{"kubernetes.io/metadata.name": "prod"}}}}
	for _, name := range []string{"a", "b", "c"} {
		in.Pods = append(in.Pods, policy.Pod{Namespace: "prod", Name: name, Node: "n1", Labels: map[string]string{"app": name},
			IPs: []netip.Addr{netip.MustParseAddr(tp.ips[name])}})
	}
	in.Pods = append(in.Pods,
		policy.Pod{Namespace: "prod", Name: "r1", Node: "n2", Labels: map[string]string{"app": "remote"}, IPs: []netip.Addr{netip.MustParseAddr(remoteIP)}},
		policy.Pod{Namespace: "prod", Name: "r2", Node: "n2", Labels: map[string]string{"app": "remote2"}, IPs: []netip.Addr{netip.MustParseAddr(remoteIP2)}})
	in.Policies = policies
	return in
}

// apply compiles the policies and programs them in the node namespace
// through a helper process (a fresh process, as the agent is).
func (tp *topo) apply(leaveBridge bool, policies ...policy.Policy) policy.Ruleset {
	tp.t.Helper()
	rs := policy.Compile(tp.input(policies...))
	tp.applyRuleset(rs, leaveBridge, false)
	return rs
}

func (tp *topo) applyRuleset(rs policy.Ruleset, leaveBridge, remove bool) {
	tp.t.Helper()
	rs.Problems = nil // errors do not travel as JSON; the dataplane ignores them
	b, err := json.Marshal(applyRequest{Ruleset: rs, LeaveBridgeNetfilter: leaveBridge, Remove: remove})
	if err != nil {
		tp.t.Fatal(err)
	}
	cmd := tp.node.Command(context.Background(), tp.exe)
	cmd.Env = append(os.Environ(), "POLICY_HELPER=apply")
	cmd.Stdin = bytes.NewReader(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		tp.t.Fatalf("apply in %s: %v\n%s", tp.node.Name, err, out)
	}
}

func selApp(app string) policy.Selector {
	return policy.Selector{MatchLabels: map[string]string{"app": app}}
}

func pod(app string) []policy.Peer {
	s := selApp(app)
	return []policy.Peer{{PodSelector: &s}}
}

func block(cidr string, except ...string) []policy.Peer {
	b := &policy.IPBlock{CIDR: netip.MustParsePrefix(cidr)}
	for _, e := range except {
		b.Except = append(b.Except, netip.MustParsePrefix(e))
	}
	return []policy.Peer{{IPBlock: b}}
}

func ingress(name, target string, rules ...policy.Rule) policy.Policy {
	return policy.Policy{Namespace: "prod", Name: name, PodSelector: selApp(target), Ingress: true, IngressRules: rules}
}

func egress(name, target string, rules ...policy.Rule) policy.Policy {
	return policy.Policy{Namespace: "prod", Name: name, PodSelector: selApp(target), Egress: true, EgressRules: rules}
}

func TestPolicyDataplane(t *testing.T) {
	tp := newTopo(t)
	a, b, c := tp.ips["a"], tp.ips["b"], tp.ips["c"]
	for _, p := range []string{"a", "b", "c", "remote"} {
		tp.serve(p, "tcp:8080", "tcp:8081", "tcp:8200", "udp:5353")
	}
	// Somebody else's table, which we must never touch.
	const foreign = `table inet someone-else {
	chain c1 {
		type filter hook forward priority 10; policy accept;
		ip saddr 192.0.2.1 drop
	}
}
`
	cmd := tp.node.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(foreign)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
	foreignBefore := tp.node.MustRun(t, "nft", "-a", "list", "table", "inet", "someone-else")

	t.Run("open without policies", func(t *testing.T) {
		tp.apply(false)
		tp.expect(
			probe{"a", "tcp", b, 8080, true}, probe{"b", "tcp", a, 8080, true},
			probe{"remote", "tcp", b, 8080, true}, probe{"a", "tcp", remoteIP, 8080, true},
			probe{"a", "icmp", b, 0, true}, probe{"a", "udp", c, 5353, true},
		)
		out := tp.node.MustRun(t, "ip", "-d", "link", "show", bridge)
		if !strings.Contains(out, "nf_call_iptables 1") || !strings.Contains(out, "nf_call_ip6tables 1") {
			t.Errorf("bridge netfilter options not switched on for %s:\n%s", bridge, out)
		}
		if _, err := tp.node.Run("nft", "list", "table", "bridge", "wgmesh-policy"); err == nil {
			t.Errorf("fallback bridge table exists although br_netfilter covers the bridge")
		}
	})

	t.Run("default deny ingress", func(t *testing.T) {
		tp.apply(false, ingress("deny-b", "b"))
		tp.expect(
			probe{"a", "tcp", b, 8080, false}, // same node, bridged
			probe{"a", "icmp", b, 0, false},
			probe{"a", "udp", b, 5353, false},
			probe{"remote", "tcp", b, 8080, false}, // through the "tunnel"
			probe{"b", "tcp", a, 8080, true},       // b's egress is open; replies pass
			probe{"b", "tcp", remoteIP, 8080, true},
			probe{"a", "tcp", c, 8080, true}, // c is not selected
		)
	})

	t.Run("allow one port from one pod", func(t *testing.T) {
		tp.apply(false, ingress("b-from-a", "b", policy.Rule{Peers: pod("a"), Ports: []policy.Port{{Protocol: policy.TCP, Port: 8080}}}))
		tp.expect(
			probe{"a", "tcp", b, 8080, true},
			probe{"a", "tcp", b, 8081, false},
			probe{"a", "udp", b, 5353, false},
			probe{"a", "icmp", b, 0, false},
			probe{"c", "tcp", b, 8080, false},
			probe{"remote", "tcp", b, 8080, false},
		)
	})

	t.Run("port range and UDP from the remote node", func(t *testing.T) {
		tp.apply(false, ingress("b-range", "b", policy.Rule{
			// The IPv6 block only makes the kernel take an IPv6
			// interval set and rules (no IPv6 traffic is sent).
			Peers: append(block("10.244.2.0/24", remoteIP2+"/32"), block("2001:db8::/32", "2001:db8::/48")...),
			Ports: []policy.Port{{Protocol: policy.TCP, Port: 8000, EndPort: 8100}, {Protocol: policy.UDP, Port: 5353}},
		}))
		tp.expect(
			probe{"remote", "tcp", b, 8080, true},
			probe{"remote", "tcp", b, 8081, true},
			probe{"remote", "tcp", b, 8200, false},
			probe{"remote", "udp", b, 5353, true},
			probe{"a", "tcp", b, 8080, false}, // not in the block
		)
		// The excepted address of the block: connect from it.
		cmd := tp.remote.Command(context.Background(), "ping", "-c1", "-W1", "-I", remoteIP2, b)
		if cmd.Run() == nil {
			t.Errorf("ping from the excepted %s reached b", remoteIP2)
		}
	})

	t.Run("egress deny to an ipBlock", func(t *testing.T) {
		tp.apply(false, egress("a-not-r2", "a", policy.Rule{Peers: block("0.0.0.0/0", remoteIP2+"/32")}))
		tp.expect(
			probe{"a", "tcp", remoteIP, 8080, true},
			probe{"a", "tcp", remoteIP2, 8080, false},
			probe{"a", "icmp", remoteIP2, 0, false},
			probe{"a", "tcp", b, 8080, true},
			probe{"b", "tcp", a, 8080, true}, // a's ingress open
		)
	})

	t.Run("egress deny all keeps replies to incoming connections", func(t *testing.T) {
		tp.apply(false, egress("a-deny", "a"))
		tp.expect(
			probe{"a", "tcp", b, 8080, false},
			probe{"a", "tcp", remoteIP, 8080, false},
			probe{"b", "tcp", a, 8080, true},
			probe{"remote", "tcp", a, 8080, true},
			probe{"remote", "udp", a, 5353, true},
		)
	})

	t.Run("a pod reaches itself through a Service despite deny-all", func(t *testing.T) {
		tp.apply(false, ingress("b-deny", "b"), egress("b-deny-e", "b"))
		svc := fmt.Sprintf(`table ip svc {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.0.10 tcp dport 80 dnat to %[1]s:8080
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[1]s ip daddr %[1]s masquerade
	}
}
`, b)
		cmd := tp.node.Command(context.Background(), "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(svc)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -f: %v\n%s", err, out)
		}
		defer tp.node.Run("nft", "delete", "table", "ip", "svc")
		tp.expect(
			probe{"b", "tcp", "10.96.0.10", 80, true},
			probe{"a", "tcp", "10.96.0.10", 80, false}, // others still denied
		)
	})

	t.Run("unchanged ruleset is not rewritten", func(t *testing.T) {
		tp.apply(false, ingress("deny-b", "b"))
		before := tp.node.MustRun(t, "nft", "-a", "list", "table", "inet", "wgmesh-policy")
		tp.apply(false, ingress("deny-b", "b"))
		after := tp.node.MustRun(t, "nft", "-a", "list", "table", "inet", "wgmesh-policy")
		if before != after {
			t.Errorf("same ruleset re-applied rewrote the table:\n%s\n----\n%s", before, after)
		}
	})

	t.Run("removing the policy restores traffic", func(t *testing.T) {
		start := time.Now()
		tp.apply(false)
		tp.expect(probe{"a", "tcp", b, 8080, true}, probe{"remote", "tcp", b, 8080, true}, probe{"a", "icmp", b, 0, true})
		t.Logf("policy removed and traffic verified in %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("fail closed policy blocks its pods", func(t *testing.T) {
		bad := ingress("broken", "b", policy.Rule{})
		bad.Err = fmt.Errorf("unrepresentable: %w", policy.ErrInvalid)
		rs := tp.apply(false, bad, ingress("open-c", "c", policy.Rule{}))
		if len(rs.Problems) != 1 {
			t.Fatalf("problems: %+v", rs.Problems)
		}
		tp.expect(probe{"a", "tcp", b, 8080, false}, probe{"remote", "tcp", b, 8080, false}, probe{"a", "tcp", c, 8080, true})
	})

	t.Run("remove deletes only our tables", func(t *testing.T) {
		tp.applyRuleset(policy.Ruleset{}, false, true)
		if out, err := tp.node.Run("nft", "list", "table", "inet", "wgmesh-policy"); err == nil {
			t.Errorf("table still there after Remove:\n%s", out)
		}
		if after := tp.node.MustRun(t, "nft", "-a", "list", "table", "inet", "someone-else"); after != foreignBefore {
			t.Errorf("foreign table changed:\n%s\n----\n%s", foreignBefore, after)
		}
		tp.expect(probe{"a", "tcp", b, 8080, true})
	})
}

func TestPolicyBridgeFallback(t *testing.T) {
	tp := newTopo(t)
	a, b, c := tp.ips["a"], tp.ips["b"], tp.ips["c"]
	for _, p := range []string{"a", "b", "c"} {
		tp.serve(p, "tcp:8080")
	}
	allowA := ingress("b-from-a-and-remote", "b", policy.Rule{Peers: append(pod("a"), pod("remote")...)})
	// br_netfilter off for the namespace and not allowed to switch it on:
	// bridged traffic never reaches the inet table.
	tp.apply(true, allowA)
	if _, err := tp.node.Run("nft", "list", "table", "bridge", "wgmesh-policy"); err != nil {
		t.Fatalf("no fallback table: %v", err)
	}
	tp.expect(
		probe{"a", "tcp", b, 8080, false},     // allowed by policy, but unverifiable when bridged: closed
		probe{"remote", "tcp", b, 8080, true}, // routed: enforced in the inet table
		probe{"c", "tcp", a, 8080, true},      // neither is isolated
		probe{"b", "tcp", c, 8080, false},     // replies to b cannot be told apart: closed
	)
	// Allowed to switch br_netfilter on for the bridge: full enforcement,
	// no fallback table.
	tp.apply(false, allowA)
	if _, err := tp.node.Run("nft", "list", "table", "bridge", "wgmesh-policy"); err == nil {
		t.Errorf("fallback table left behind")
	}
	tp.expect(probe{"a", "tcp", b, 8080, true}, probe{"c", "tcp", b, 8080, false}, probe{"b", "tcp", c, 8080, true})
}

// TestPolicyScale programs the benchmark's clusters (1000 pods, 200
// policies; 100 or all 1000 pods on this node) into a namespace: the kernel
// must take the batch well within the 1 s budget for a change, and a
// re-apply of the same ruleset must be a no-op.
func TestPolicyScale(t *testing.T) {
	netnstest.RequireRoot(t)
	exe, _ := os.Executable()
	for _, s := range []struct {
		name  string
		shape policytest.Shape
		// bound for one Apply: the 1 s budget for a realistic node
		// (100 local pods); the all-local worst case (a full table
		// replace with 1000 pods' maps) is only kept from regressing,
		// its time is reported.
		bound time.Duration
	}{
		{"spread", policytest.Shape{Pods: 1000, Policies: 200, Nodes: 10, Namespaces: 20}, time.Second},
		{"all-local", policytest.Shape{Pods: 1000, Policies: 200, Nodes: 1, Namespaces: 20}, 3 * time.Second},
	} {
		t.Run(s.name, func(t *testing.T) {
			ns := netnstest.NewNS(t, netnstest.Prefix(t)+"-scale")
			ns.MustRun(t, "ip", "link", "add", bridge, "type", "bridge")
			rs := policy.Compile(policytest.Cluster(s.shape))
			b, _ := json.Marshal(applyRequest{Ruleset: rs})
			for i, what := range []string{"first apply", "unchanged re-apply"} {
				cmd := ns.Command(context.Background(), exe)
				cmd.Env = append(os.Environ(), "POLICY_HELPER=apply")
				cmd.Stdin = bytes.NewReader(b)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", what, err, out)
				}
				var us int64
				for _, line := range strings.Split(string(out), "\n") {
					fmt.Sscanf(line, "apply took %d us", &us)
					if strings.Contains(line, "table replaced") {
						t.Log(line)
					}
				}
				took := time.Duration(us) * time.Microsecond
				t.Logf("%s of %d targets: Apply took %s", what, len(rs.Targets), took)
				if took <= 0 || took > s.bound {
					t.Errorf("%s: Apply took %s (output %q), want under %s", what, took, out, s.bound)
				}
				if i == 1 && bytes.Contains(out, []byte("table replaced")) {
					t.Errorf("unchanged ruleset was re-applied:\n%s", out)
				}
			}
			out := ns.MustRun(t, "nft", "list", "table", "inet", "wgmesh-policy")
			for _, tg := range rs.Targets {
				if !strings.Contains(out, tg.IPs[0].String()+" : jump") {
					t.Fatalf("target %s (%s) missing from the maps", tg.Pod, tg.IPs[0])
				}
			}
		})
	}
}
