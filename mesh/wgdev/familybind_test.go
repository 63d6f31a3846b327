package wgdev

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
)

// TestFamilyBindFields fails when a wireguard-go update changed the fields
// familyBind shares (then check whether wireguard-go#135 is in and this
// workaround can go).
func TestFamilyBindFields(t *testing.T) {
	if errNoFamilyBind != nil {
		t.Fatal(errNoFamilyBind)
	}
	b, err := newFamilyBind(conn.NewStdNetBind())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*familyBind); !ok {
		t.Fatalf("newFamilyBind(StdNetBind) = %T, want *familyBind", b)
	}
	other := bindtest.NewChannelBinds()[0]
	if b, _ := newFamilyBind(other); b != other {
		t.Fatalf("newFamilyBind(%T) = %T, want it unchanged", other, b)
	}
}

// TestFamilyBindMixedSends sends IPv6, IPv4, IPv6 datagrams in turn from
// one bind in a network namespace of its own and counts what arrives at
// each IPv6 receiver. Through familyBind every datagram arrives; the plain
// StdNetBind's count is logged to show the bug the wrapper works around.
func TestFamilyBindMixedSends(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	const rounds = 50
	runtime.LockOSThread()
	// The thread goes back to its namespace before it is unlocked; if
	// that fails it stays locked, and Go ends the thread with the test.
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		ns.Close()
	}()
	a, b := netip.MustParseAddr("2001:db8:100::a"), netip.MustParseAddr("2001:db8:100::b")
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []netip.Addr{a, b} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(lo, addr); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name   string
		wrap   bool
		assert bool
	}{
		{name: "familyBind", wrap: true, assert: true},
		{name: "plain StdNetBind", wrap: false},
	} {
		var bind conn.Bind = conn.NewStdNetBind()
		if tc.wrap {
			if bind, err = newFamilyBind(bind); err != nil {
				t.Fatal(err)
			}
		}
		got, err := mixedSends(bind, rounds, a, b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%s: %d of %d datagrams to %s arrived, %d of %d to %s", tc.name, got[a], rounds, a, got[b], rounds, b)
		if tc.assert && (got[a] != rounds || got[b] != rounds) {
			t.Errorf("%s lost IPv6 datagrams sent beside IPv4 ones: %d and %d of %d arrived", tc.name, got[a], got[b], rounds)
		}
	}
}

// mixedSends opens bind in the current network namespace and, rounds
// times, sends one datagram to a, one to 127.0.0.1 and one to b (each to a
// receiver of its own), then counts the datagrams each IPv6 receiver got.
func mixedSends(bind conn.Bind, rounds int, a, b netip.Addr) (map[netip.Addr]int, error) {
	if _, _, err := bind.Open(0); err != nil {
		return nil, err
	}
	defer bind.Close()
	rx := map[netip.Addr]*net.UDPConn{}
	for _, ip := range []netip.Addr{a, b, netip.MustParseAddr("127.0.0.1")} {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		rx[ip] = c
	}
	ep := func(ip netip.Addr) conn.Endpoint {
		return &conn.StdNetEndpoint{AddrPort: rx[ip].LocalAddr().(*net.UDPAddr).AddrPort()}
	}
	order := []netip.Addr{a, netip.MustParseAddr("127.0.0.1"), b}
	for i := 0; i < rounds; i++ {
		for _, ip := range order {
			if err := bind.Send([][]byte{[]byte(fmt.Sprintf("%s %d", ip, i))}, ep(ip)); err != nil {
				return nil, fmt.Errorf("send to %s: %w", ip, err)
			}
		}
	}
	got := map[netip.Addr]int{}
	buf := make([]byte, 256)
	for _, ip := range []netip.Addr{a, b} {
		c := rx[ip]
		for {
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			if bytes.HasPrefix(buf[:n], []byte(ip.String()+" ")) {
				got[ip]++
			}
		}
	}
	return got, nil
}
