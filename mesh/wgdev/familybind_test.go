package wgdev

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// each receiver. The namespace has only its loopback addresses, so a
// misdirected datagram either has no route (the send fails), reaches a
// local port nobody listens on (the kernel's NoPorts counters), or reaches
// another of the receivers (a stray). Through familyBind none of that may
// happen and every datagram arrives; the plain StdNetBind's figures are
// logged to show the bug it works around.
func TestFamilyBindMixedSends(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	const rounds = 30
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
	// The kernel finishes adding an IPv6 address in a work queue: until
	// then datagrams to it are dropped without a UDP counter (under
	// make test's load the first ~28 of 50 were).
	for _, ip := range []netip.Addr{a, b} {
		if err := waitReceives(ip, 2*time.Second); err != nil {
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
		noPorts := udpNoPorts(t)
		r, err := mixedSends(bind, rounds, a, v4, b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		noPorts = udpNoPorts(t) - noPorts
		t.Logf("%s: of %d datagrams each, %d arrived at %s, %d at %s, %d at %s; %d strays, %d to unbound ports, %d sends failed",
			tc.name, rounds, r.got[a], a, r.got[v4], v4, r.got[b], b, r.strays, noPorts, len(r.sendErrs))
		if !tc.assert {
			continue
		}
		if r.strays > 0 || noPorts > 0 || len(r.sendErrs) > 0 {
			t.Errorf("%s misdirected datagrams: %d strays, %d to unbound ports, %d sends failed (first: %v)",
				tc.name, r.strays, noPorts, len(r.sendErrs), errors.Join(r.sendErrs...))
		}
		for _, ip := range []netip.Addr{a, v4, b} {
			if r.got[ip] != rounds {
				t.Errorf("%s: %d of %d datagrams to %s arrived", tc.name, r.got[ip], rounds, ip)
			}
		}
	}
}

// mixedSends opens bind in the current network namespace and, rounds
// times, sends one datagram to each of order (each address has a receiver
// of its own, read as they arrive), waiting up to 100 ms for each to
// arrive before the next send, so that no receive buffer fills; a
// misdirected datagram never arrives. Failed sends are returned,
// not fatal: the buggy bind sends some datagrams to an address without a
// route.
func mixedSends(bind conn.Bind, rounds int, order ...netip.Addr) (*sendResult, error) {
	if _, _, err := bind.Open(0); err != nil {
		return nil, err
	}
	defer bind.Close()
	rx := map[netip.Addr]*net.UDPConn{}
	arrived := map[netip.Addr]chan struct{}{}
	var strays atomic.Int64
	var readers sync.WaitGroup
	defer readers.Wait()
	for _, ip := range order {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
		if err != nil {
			return nil, err
		}
		defer c.Close() // before readers.Wait: ends the reader
		rx[ip] = c
		ch := make(chan struct{}, rounds)
		arrived[ip] = ch
		prefix := []byte(ip.String() + " ")
		readers.Go(func() {
			buf := make([]byte, 256)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				if !bytes.HasPrefix(buf[:n], prefix) {
					strays.Add(1)
					continue
				}
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		})
	}
	ep := func(ip netip.Addr) conn.Endpoint {
		return &conn.StdNetEndpoint{AddrPort: rx[ip].LocalAddr().(*net.UDPAddr).AddrPort()}
	}
	r := &sendResult{got: map[netip.Addr]int{}}
	got := r.got
	for i := 0; i < rounds; i++ {
		for _, ip := range order {
			if err := bind.Send([][]byte{[]byte(fmt.Sprintf("%s %d", ip, i))}, ep(ip)); err != nil {
				r.sendErrs = append(r.sendErrs, fmt.Errorf("send to %s: %w", ip, err))
				continue
			}
			select {
			case <-arrived[ip]:
				got[ip]++
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// Late arrivals count too (a loaded machine may run the readers
	// late); a misdirected datagram never comes, hence the deadline.
	deadline := time.Now().Add(3 * time.Second)
	for _, ip := range order {
		for got[ip]+len(arrived[ip]) < rounds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		got[ip] += len(arrived[ip])
	}
	r.strays = int(strays.Load())
	return r, nil
}

type sendResult struct {
	got      map[netip.Addr]int // datagrams each receiver got
	strays   int                // datagrams a receiver got that were meant for another
	sendErrs []error
}

// waitReceives returns once a datagram sent to ip arrives there (one
// every 10 ms), or an error after timeout.
func waitReceives(ip netip.Addr, timeout time.Duration) error {
	rx, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return err
	}
	defer rx.Close()
	tx, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer tx.Close()
	to := rx.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 16)
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if _, err := tx.WriteToUDP([]byte("ready?"), to); err != nil {
			return err
		}
		_ = rx.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := rx.Read(buf); err == nil {
			return nil
		}
	}
	return fmt.Errorf("no datagram to %s arrived within %s", ip, timeout)
}

// udpNoPorts returns the datagrams this thread's network namespace
// received for a port nobody listened on, IPv4 and IPv6 (/proc/net/snmp's
// Udp NoPorts, /proc/net/snmp6's Udp6NoPorts).
func udpNoPorts(t *testing.T) int {
	t.Helper()
	v4, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	v6, err := os.ReadFile("/proc/thread-self/net/snmp6")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	// snmp: a "Udp:" line of names, then one of values.
	var names []string
	for _, ln := range strings.Split(string(v4), "\n") {
		f := strings.Fields(ln)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i := range min(len(names), len(f)) {
			if names[i] == "NoPorts" {
				v, _ := strconv.Atoi(f[i])
				n += v
			}
		}
		break
	}
	for _, ln := range strings.Split(string(v6), "\n") {
		if f := strings.Fields(ln); len(f) == 2 && f[0] == "Udp6NoPorts" {
			v, _ := strconv.Atoi(f[1])
			n += v
		}
	}
	return n
}
