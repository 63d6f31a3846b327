package vagrant

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
)

// The helper process for TestTopologyScript: `udp-echo` answers every datagram on :51820 and prints
// who it came from; `udp-send` sends from :51820 (or :40000) to
// WGMESH_VAGRANT_DST:51820 and prints the reply's source. It runs inside a namespace via `ip netns exec`.
func TestMain(m *testing.M) {
	switch os.Getenv("WGMESH_VAGRANT_HELPER") {
	case "udp-echo":
		os.Exit(udpEcho())
	case "udp-send":
		os.Exit(udpSend(os.Getenv("WGMESH_VAGRANT_DST")))
	}
	os.Exit(m.Run())
}

func listenWG() (*net.UDPConn, error) {
	return net.ListenUDP("udp4", &net.UDPAddr{Port: 51820})
}

func udpEcho() int {
	c, err := listenWG()
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	defer c.Close()
	buf := make([]byte, 64)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return 0 // deadline: done
		}
		fmt.Printf("saw %s from %s\n", buf[:n], from)
		c.WriteToUDP([]byte("reply"), from)
	}
}

func udpSend(dst string) int {
	var c *net.UDPConn
	var err error
	if os.Getenv("WGMESH_VAGRANT_SPORT") == "other" {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 40000})
	} else {
		c, err = listenWG()
	}
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	defer c.Close()
	to := &net.UDPAddr{IP: net.ParseIP(dst), Port: 51820}
	buf := make([]byte, 64)
	// Retry: the echo server may still be starting.
	for i := 0; i < 20; i++ {
		if _, err := c.WriteToUDP([]byte(os.Getenv("WGMESH_VAGRANT_NAME")), to); err != nil {
			fmt.Println("send:", err)
			return 1
		}
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if _, from, err := c.ReadFromUDP(buf); err == nil {
			fmt.Printf("reply from %s\n", from)
			return 0
		}
	}
	fmt.Println("no reply")
	return 1
}

// TestTopologyScript runs provision/topology.sh in three namespaces wired as
// the Vagrantfile wires the VMs, and checks the NAT it builds: wg3 reaches
// wg1 through wg2 with a translated source (never port 51820), wg2's own
// WireGuard flow from :51820 keeps working beside wg3's mapping, and wg1 has
// no route to wg3 at all. Root: it makes namespaces (never skips).
func TestTopologyScript(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "nft")
	p := netnstest.Prefix(t)
	wg1, wg2, wg3 := netnstest.NewNS(t, p+"-wg1"), netnstest.NewNS(t, p+"-wg2"), netnstest.NewNS(t, p+"-wg3")
	pfx := netip.MustParsePrefix
	netnstest.Veth(t, wg1, "eth1", pfx("198.51.100.11/24"), wg2, "eth1", pfx("198.51.100.12/24"))
	netnstest.Veth(t, wg2, "eth2", pfx("203.0.113.254/24"), wg3, "eth1", pfx("203.0.113.13/24"))
	wg2.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// Like a VM's management NIC, wg1 has a default route: only topology.sh's
	// unreachable route keeps natnet out of reach.
	wg1.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.12")

	env := []string{"WGMESH_UNDERLAY_CIDR=198.51.100.0/24", "WGMESH_NATNET_CIDR=203.0.113.0/24", "WGMESH_NAT_GATEWAY=203.0.113.254"}
	for _, n := range []struct {
		ns       *netnstest.NS
		topology string
	}{{wg1, "plain"}, {wg2, "router"}, {wg3, "nated"}} {
		// Twice: provisioning and reboots rerun it; it must not duplicate rules.
		for range 2 {
			argv := append([]string{"env", "WGMESH_TOPOLOGY=" + n.topology}, env...)
			n.ns.MustRun(t, append(argv, "bash", "provision/topology.sh")...)
		}
	}
	if rules := wg2.MustRun(t, "nft", "list", "table", "ip", "wgmesh-vagrant-nat"); strings.Count(rules, "masquerade") != 2 {
		t.Errorf("wg2's NAT table after two runs:\n%s", rules)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	echo := wg1.Start(t, "udp-echo", []string{"WGMESH_VAGRANT_HELPER=udp-echo"}, self)
	send := func(ns *netnstest.NS, name string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := ns.Command(ctx, self)
		cmd.Env = append(os.Environ(), "WGMESH_VAGRANT_HELPER=udp-send", "WGMESH_VAGRANT_DST=198.51.100.11", "WGMESH_VAGRANT_NAME="+name)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := send(wg3, "from-wg3"); err != nil || !strings.Contains(out, "reply from 198.51.100.11:51820") {
		t.Errorf("wg3 (behind NAT) -> wg1: %v: %s", err, out)
	}
	if out, err := send(wg2, "from-wg2"); err != nil || !strings.Contains(out, "reply from 198.51.100.11:51820") {
		t.Errorf("wg2 -> wg1 from :51820 beside wg3's mapping: %v: %s", err, out)
	}
	netnstest.Eventually(t, 5*time.Second, "wg1 saw both senders", func() error {
		if !strings.Contains(echo.Output(), "saw from-wg2 from 198.51.100.12:51820") ||
			!strings.Contains(echo.Output(), "saw from-wg3 from 198.51.100.12:1") {
			return errors.New(echo.Output())
		}
		return nil
	})
	// wg3's source was translated into 10000-19999, never left at 51820.
	for _, l := range strings.Split(echo.Output(), "\n") {
		if strings.HasPrefix(l, "saw from-wg3 from ") {
			ap, err := netip.ParseAddrPort(strings.TrimPrefix(l, "saw from-wg3 from "))
			if err != nil || ap.Port() < 10000 || ap.Port() > 19999 {
				t.Errorf("wg3's translated source %q, want 198.51.100.12:10000-19999", l)
			}
		}
	}
	if out, err := wg1.Run("ip", "route", "get", "203.0.113.13"); err == nil {
		t.Errorf("wg1 has a route to the NAT'd network: %s", out)
	}

	// Even with a route through wg2, nothing from the underlay opens a flow
	// into natnet: wg2 is a NAT, not a router.
	wg1.MustRun(t, "ip", "route", "replace", "203.0.113.0/24", "via", "198.51.100.12")
	inner := wg3.Start(t, "udp-echo-wg3", []string{"WGMESH_VAGRANT_HELPER=udp-echo"}, self)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := wg1.Command(ctx, self)
	// From another source port: a packet from :51820 would be dropped anyway,
	// as a conntrack clash with wg3's own flow, and prove nothing.
	cmd.Env = append(os.Environ(), "WGMESH_VAGRANT_HELPER=udp-send", "WGMESH_VAGRANT_DST=203.0.113.13",
		"WGMESH_VAGRANT_NAME=inward", "WGMESH_VAGRANT_SPORT=other")
	if out, err := cmd.CombinedOutput(); err == nil || strings.Contains(inner.Output(), "inward") {
		t.Errorf("wg1 opened a flow into natnet (sender: %v %s; wg3 saw: %s)", err, out, inner.Output())
	}
}
