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
// each receiver. Through familyBind every datagram arrives; the plain
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
		// New may fail after the unshare: unlock only a thread that
		// is back in its namespace.
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		}
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		ns.Close()
	}()
	a, b, v4 := netip.MustParseAddr("2001:db8:100::a"), netip.MustParseAddr("2001:db8:100::b"), netip.MustParseAddr("127.0.0.1")
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
		got, sendErrs, err := mixedSends(bind, rounds, a, v4, b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%s: of %d datagrams each, %d arrived at %s, %d at %s, %d at %s; %d sends failed",
			tc.name, rounds, got[a], a, got[v4], v4, got[b], b, len(sendErrs))
		if !tc.assert {
			continue
		}
		for _, ip := range []netip.Addr{a, v4, b} {
			if got[ip] != rounds {
				t.Errorf("%s: %d of %d datagrams to %s arrived", tc.name, got[ip], rounds, ip)
			}
		}
		if len(sendErrs) > 0 {
			t.Errorf("%s: %d sends failed, the first: %v", tc.name, len(sendErrs), sendErrs[0])
		}
	}
}

// mixedSends opens bind in the current network namespace and, rounds
// times, sends one datagram to each of order (each address has a receiver
// of its own), then counts the datagrams each receiver got. Failed sends
// are returned, not fatal: the buggy bind sends some datagrams to an
// address without a route.
func mixedSends(bind conn.Bind, rounds int, order ...netip.Addr) (got map[netip.Addr]int, sendErrs []error, err error) {
	if _, _, err := bind.Open(0); err != nil {
		return nil, nil, err
	}
	defer bind.Close()
	rx := map[netip.Addr]*net.UDPConn{}
	for _, ip := range order {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
		if err != nil {
			return nil, nil, err
		}
		defer c.Close()
		rx[ip] = c
	}
	ep := func(ip netip.Addr) conn.Endpoint {
		return &conn.StdNetEndpoint{AddrPort: rx[ip].LocalAddr().(*net.UDPAddr).AddrPort()}
	}
	for i := 0; i < rounds; i++ {
		for _, ip := range order {
			if err := bind.Send([][]byte{[]byte(fmt.Sprintf("%s %d", ip, i))}, ep(ip)); err != nil {
				sendErrs = append(sendErrs, fmt.Errorf("send to %s: %w", ip, err))
			}
		}
	}
	got = map[netip.Addr]int{}
	buf := make([]byte, 256)
	for _, ip := range order {
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
	return got, sendErrs, nil
}
