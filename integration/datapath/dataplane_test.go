package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/dataplane"
)

// TestDataplaneOnRealKernel drives dataplane.Apply against a real kernel in
// a fresh namespace: idempotence (no churn of routes or nftables handles),
// removal of only our stale routes, foreign routes left alone, podCIDR
// changes, repair of deleted rules.
func TestDataplaneOnRealKernel(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "nft", "iptables", "ip6tables")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := netnstest.NewNS(t, netnstest.Prefix(t)+"-dp")
	ns.MustRun(t, "iptables", "-P", "FORWARD", "DROP")
	ns.MustRun(t, "ip6tables", "-P", "FORWARD", "DROP")
	env, err := childEnv("dataplane", struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	p := ns.Start(t, "dataplane checks", env, self)
	select {
	case <-p.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("dataplane checks did not finish")
	}
	if err := p.Stop(syscall.SIGKILL, time.Second); err != nil {
		t.Fatalf("dataplane checks failed: %v (output above)", err)
	}
	t.Logf("dataplane checks:\n%s", p.Output())
}

// runDataplaneRole runs inside the test namespace.
func runDataplaneRole([]byte) error {
	const wg = "wgt0"
	sh := func(argv ...string) (string, error) {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
		}
		return string(out), nil
	}
	step := func(format string, args ...any) { fmt.Printf("== "+format+"\n", args...) }
	// A persistent TUN stands in for the WireGuard interface; routes and
	// rules only need the link. (No dummy module on every kernel.)
	if _, err := sh("ip", "tuntap", "add", "dev", wg, "mode", "tun"); err != nil {
		return err
	}
	if _, err := sh("ip", "link", "set", wg, "up"); err != nil {
		return err
	}
	// Routes that are not ours, one in the way of a pod prefix.
	for _, dst := range []string{"10.244.9.0/24", "10.244.4.0/24"} {
		if _, err := sh("ip", "route", "add", dst, "dev", wg, "proto", "static"); err != nil {
			return err
		}
	}
	dp, err := dataplane.New(dataplane.Config{WGInterface: wg})
	if err != nil {
		return err
	}
	ctx := context.Background()
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	ours := func() (string, error) {
		return sh("ip", "route", "show", "proto", fmt.Sprint(dataplane.DefaultRouteProtocol))
	}
	expect := func(what, got string, want ...string) error {
		for _, w := range want {
			if !strings.Contains(got, w) {
				return fmt.Errorf("%s: missing %q in:\n%s", what, w, got)
			}
		}
		return nil
	}
	expectNot := func(what, got string, notWant ...string) error {
		for _, w := range notWant {
			if strings.Contains(got, w) {
				return fmt.Errorf("%s: unexpected %q in:\n%s", what, w, got)
			}
		}
		return nil
	}
	// snapshot is everything Apply owns, with nftables handles: a
	// converged Apply must leave it byte-identical.
	snapshot := func() (string, error) {
		var b strings.Builder
		for _, argv := range [][]string{
			// -br and -4: no timers or DAD states that change
			// by themselves.
			{"ip", "-br", "link", "show", dataplane.DefaultBridge},
			{"ip", "-4", "-br", "addr", "show", dataplane.DefaultBridge},
			{"ip", "route", "show", "table", "main"},
			{"nft", "-a", "list", "table", "inet", dataplane.DefaultTable},
			{"nft", "-a", "list", "table", "inet", dataplane.DefaultGuardTable},
			{"nft", "-a", "list", "chain", "ip", "filter", "FORWARD"},
			{"nft", "-a", "list", "chain", "ip6", "filter", "FORWARD"},
		} {
			out, err := sh(argv...)
			if err != nil {
				return "", err
			}
			b.WriteString(out)
		}
		return b.String(), nil
	}

	step("prepare: fail-closed catch-all and guard, nothing else")
	if err := dp.Prepare(ctx); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	out, _ := ours()
	fmt.Print(out)
	if err := expect("fail-closed route", out, fmt.Sprintf("unreachable 10.244.0.0/16 metric %d", dataplane.FailClosedMetric)); err != nil {
		return err
	}
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != 1 {
		return fmt.Errorf("prepare made %d routes, want only the catch-all:\n%s", n, out)
	}
	guard, err := sh("nft", "list", "table", "inet", dataplane.DefaultGuardTable)
	if err != nil {
		return err
	}
	fmt.Print(guard)
	if err := expect("guard table", guard,
		"type filter hook postrouting priority 300; policy accept;",
		`oifname != "wgt0" oifname != "wgmesh-br0" oifname != "lo" ip daddr 10.244.0.0/16 counter packets 0 bytes 0 drop`,
		`oifname != "wgt0" oifname != "wgmesh-br0" oifname != "lo" ip saddr 10.244.0.0/16 counter packets 0 bytes 0 drop`); err != nil {
		return err
	}
	if out, err := sh("nft", "list", "table", "inet", dataplane.DefaultTable); err == nil {
		return fmt.Errorf("prepare created the main table:\n%s", out)
	}
	if _, err := sh("ip", "link", "show", dataplane.DefaultBridge); err == nil {
		return fmt.Errorf("prepare created the bridge")
	}
	// The catch-all answers for every remote pod address.
	if out, err := sh("ip", "route", "get", "10.244.77.5"); err == nil || !strings.Contains(out, "No route to host") {
		return fmt.Errorf("ip route get 10.244.77.5 after prepare: %v: %s", err, out)
	}

	step("first apply")
	st := mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.1.0/24"), RemotePodCIDRs: pfx("10.244.2.0/24", "10.244.3.0/24"), MTU: 1400}
	if err := dp.Apply(ctx, st); err != nil {
		return fmt.Errorf("first apply: %w", err)
	}
	out, _ = sh("ip", "addr", "show", dataplane.DefaultBridge)
	if err := expect("bridge", out, "mtu 1400", "inet 10.244.1.1/24", "UP"); err != nil {
		return err
	}
	out, _ = ours()
	fmt.Print(out)
	if err := expect("our routes", out,
		fmt.Sprintf("unreachable 10.244.0.0/16 metric %d", dataplane.FailClosedMetric),
		"10.244.2.0/24 dev wgt0 scope link src 10.244.1.1",
		"10.244.3.0/24 dev wgt0 scope link src 10.244.1.1"); err != nil {
		return err
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(v)) != "1" {
		return fmt.Errorf("ip_forward = %q", v)
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); strings.TrimSpace(string(v)) != "0" {
		return fmt.Errorf("ipv6 forwarding turned on for an IPv4-only node: %q", v)
	}
	out, _ = sh("nft", "list", "table", "inet", dataplane.DefaultTable)
	fmt.Print(out)
	if err := expect("nft table", out,
		`iifname "wgmesh-br0" oifname "wgt0"`,
		`oifname != "wgmesh-br0" oifname != "wgt0" ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16`,
		"masquerade",
		// nft itself decodes our MSS clamp as the rule it would write.
		`oifname "wgt0" tcp flags syn / syn,rst counter packets 0 bytes 0 tcp option maxseg size set rt mtu`,
		`iifname "wgt0" tcp flags syn / syn,rst counter packets 0 bytes 0 tcp option maxseg size set rt mtu`); err != nil {
		return err
	}
	// iptables-nft must still understand the whole table (a rule it
	// cannot decode makes it refuse the table, breaking other users).
	for _, argv := range [][]string{{"iptables-save"}, {"ip6tables-save"}} {
		out, err := sh(argv...)
		if err != nil {
			return err
		}
		if err := expectNot(argv[0], out, "incompatible", "Warning"); err != nil {
			return err
		}
	}
	out, _ = sh("iptables", "-S", "FORWARD")
	fmt.Print(out)
	if err := expect("iptables FORWARD", out, "-P FORWARD DROP",
		"-A FORWARD -i wgmesh-br0 -o wgt0 -m comment",
		"-A FORWARD -i wgt0 -o wgmesh-br0 -m comment",
		"-A FORWARD -i wgt0 -o wgt0 -m comment",
		"-A FORWARD -i wgmesh-br0 -o wgmesh-br0 -m comment",
		"-A FORWARD -i wgmesh-br0 -m comment",
		"-A FORWARD -o wgmesh-br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment"); err != nil {
		return err
	}
	if n := strings.Count(out, "-A FORWARD"); n != 6 {
		return fmt.Errorf("iptables FORWARD has %d rules, want our 6", n)
	}

	step("second apply changes nothing")
	before, err := snapshot()
	if err != nil {
		return err
	}
	if err := dp.Apply(ctx, st); err != nil {
		return fmt.Errorf("second apply: %w", err)
	}
	after, err := snapshot()
	if err != nil {
		return err
	}
	if before != after {
		return fmt.Errorf("converged apply changed state:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	step("remote set changes; a foreign route blocks one prefix")
	st.RemotePodCIDRs = pfx("10.244.3.0/24", "10.244.4.0/24")
	err = dp.Apply(ctx, st)
	if !errors.Is(err, dataplane.ErrRouteConflict) {
		return fmt.Errorf("apply over a foreign route: error %v, want ErrRouteConflict", err)
	}
	fmt.Println("reported:", err)
	out, _ = sh("ip", "route", "show", "table", "main")
	fmt.Print(out)
	if err := expect("routes", out,
		"10.244.3.0/24 dev wgt0 proto 157 scope link src 10.244.1.1",
		"10.244.4.0/24 dev wgt0 proto static",
		"10.244.9.0/24 dev wgt0 proto static"); err != nil {
		return err
	}
	if err := expectNot("routes", out, "10.244.2.0/24"); err != nil {
		return err
	}

	step("pod CIDR changes: gateway, route sources and NAT follow")
	st = mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.7.0/24"), RemotePodCIDRs: pfx("10.244.3.0/24"), MTU: 1400}
	if err := dp.Apply(ctx, st); err != nil {
		return err
	}
	out, _ = sh("ip", "addr", "show", dataplane.DefaultBridge)
	if err := expect("bridge", out, "inet 10.244.7.1/24"); err != nil {
		return err
	}
	if err := expectNot("bridge", out, "10.244.1.1"); err != nil {
		return err
	}
	out, _ = ours()
	if err := expect("our routes", out, "10.244.3.0/24 dev wgt0 scope link src 10.244.7.1"); err != nil {
		return err
	}
	out, _ = sh("nft", "list", "table", "inet", dataplane.DefaultTable)
	if err := expect("nft", out, "ip saddr 10.244.7.0/24"); err != nil {
		return err
	}
	if err := expectNot("nft", out, "10.244.1.0/24"); err != nil {
		return err
	}

	step("a deleted accept rule is restored, without duplicates")
	if _, err := sh("iptables", "-D", "FORWARD", "-i", "wgt0", "-o", "wgmesh-br0", "-m", "comment",
		"--comment", ruleComment(), "-j", "ACCEPT"); err != nil {
		return err
	}
	if _, err := sh("iptables", "-I", "FORWARD", "1", "-s", "198.51.100.99", "-j", "DROP"); err != nil {
		return err
	}
	if err := dp.Apply(ctx, st); err != nil {
		return err
	}
	out, _ = sh("iptables", "-S", "FORWARD")
	fmt.Print(out)
	lines := regexp.MustCompile(`(?m)^-A FORWARD.*$`).FindAllString(out, -1)
	if len(lines) != 7 || !strings.Contains(lines[0], "wgmesh-br0 -o wgt0") ||
		!strings.Contains(lines[1], "-i wgt0 -o wgmesh-br0") || !strings.Contains(lines[6], "198.51.100.99") {
		return fmt.Errorf("FORWARD after repair: want our 6 rules first, then the foreign one:\n%s", out)
	}

	step("dual stack turns on IPv6 forwarding and adds IPv6 NAT and routes")
	st = mesh.DataplaneState{LocalPodCIDRs: pfx("10.244.7.0/24", "fd00:10:244:7::/64"), RemotePodCIDRs: pfx("10.244.3.0/24", "fd00:10:244:3::/64"), MTU: 1400}
	if err := dp.Apply(ctx, st); err != nil {
		return err
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); strings.TrimSpace(string(v)) != "1" {
		return fmt.Errorf("ipv6 forwarding = %q", v)
	}
	out, _ = sh("ip", "-6", "route", "show", "proto", fmt.Sprint(dataplane.DefaultRouteProtocol))
	if err := expect("v6 routes", out, "fd00:10:244:3::/64 dev wgt0", "src fd00:10:244:7::1"); err != nil {
		return err
	}
	out, _ = sh("nft", "list", "table", "inet", dataplane.DefaultTable)
	if err := expect("nft", out, "ip6 saddr fd00:10:244:7::/64"); err != nil {
		return err
	}
	out, _ = sh("nft", "list", "table", "inet", dataplane.DefaultGuardTable)
	if err := expect("guard", out, `ip6 daddr fd00:10:244::/56`, `ip6 saddr fd00:10:244::/56`); err == nil {
		return fmt.Errorf("guard covers an IPv6 range that is not a cluster cidr:\n%s", out)
	}

	step("uninstall removes our routes, tables, FORWARD rules and bridge; foreign ones stay")
	if err := dp.Uninstall(ctx); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if out, _ := ours(); strings.TrimSpace(out) != "" {
		return fmt.Errorf("routes of ours left after uninstall:\n%s", out)
	}
	out, _ = sh("ip", "route", "show", "table", "main")
	if err := expect("foreign routes", out, "10.244.4.0/24 dev wgt0 proto static", "10.244.9.0/24 dev wgt0 proto static"); err != nil {
		return err
	}
	out, _ = sh("nft", "list", "tables")
	if err := expectNot("nft tables", out, "inet "+dataplane.DefaultTable+"\n", "inet "+dataplane.DefaultGuardTable); err != nil {
		return err
	}
	out, _ = sh("iptables", "-S", "FORWARD")
	if err := expectNot("iptables FORWARD", out, "wgmesh"); err != nil {
		return err
	}
	if err := expect("iptables FORWARD", out, "-A FORWARD -s 198.51.100.99/32 -j DROP"); err != nil {
		return err
	}
	if _, err := sh("ip", "link", "show", dataplane.DefaultBridge); err == nil {
		return fmt.Errorf("bridge left after uninstall")
	}
	if err := dp.Uninstall(ctx); err != nil {
		return fmt.Errorf("second uninstall: %w", err)
	}
	fmt.Println("all dataplane checks passed")
	return nil
}

// ruleComment finds the comment of our wg->bridge rule as iptables shows it.
func ruleComment() string {
	out, _ := exec.Command("iptables", "-S", "FORWARD").CombinedOutput()
	m := regexp.MustCompile(`-i wgt0 -o wgmesh-br0 -m comment --comment "([^"]+)"`).FindSubmatch(out)
	if m == nil {
		return "not-found"
	}
	return string(m[1])
}
