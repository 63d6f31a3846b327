package wgdev

import (
	"fmt"
	"net"
	"reflect"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.zx2c4.com/wireguard/conn"
)

// Mixed-family sends.
//
// conn.StdNetBind.Send takes a *net.UDPAddr from one pool for both address
// families and copies the destination into it before resizing it: an IPv4
// send leaves it 4 bytes long, and the next IPv6 send that gets it copies
// only the first 4 bytes of its 16 and keeps 12 stale ones. A node with
// IPv4 and IPv6 peers then sends some of its IPv6 datagrams to a wrong
// address (seen in the dual-stack lab: handshakes for 2001:db8:100::13 left
// for 2001:db8::, and the pair stayed silent for seconds). The fix is
// upstream as WireGuard/wireguard-go#135, still open; the version we use
// has the bug.
//
// familyBind keeps each pool to one family: IPv6 (and IPv4-mapped)
// destinations go through the bind wireguard-go opened, IPv4 destinations
// through a second StdNetBind that shares its IPv4 socket but has a pool
// of its own. Sharing the socket means setting unexported fields
// (sendFields); if a wireguard-go update renames or retypes them,
// newFamilyBind says so and the device runs on the plain bind
// (TestFamilyBindFields fails on such an update). Remove this file once
// the fix is released.
type familyBind struct {
	*conn.StdNetBind

	mu sync.RWMutex
	v4 *conn.StdNetBind // nil while closed
}

// sendFields are the StdNetBind fields its Send reads for an IPv4
// destination, with the types this file was written against.
var sendFields = []struct {
	name string
	typ  reflect.Type
}{
	{"ipv4", reflect.TypeFor[*net.UDPConn]()},
	{"ipv4PC", reflect.TypeFor[*ipv4.PacketConn]()},
	{"ipv4TxOffload", reflect.TypeFor[bool]()},
}

// errNoFamilyBind is why familyBind cannot work with this wireguard-go (nil
// if it can).
var errNoFamilyBind = checkSendFields()

func checkSendFields() error {
	t := reflect.TypeFor[conn.StdNetBind]()
	for _, f := range sendFields {
		sf, ok := t.FieldByName(f.name)
		if !ok {
			return fmt.Errorf("conn.StdNetBind has no field %s", f.name)
		}
		if sf.Type != f.typ {
			return fmt.Errorf("conn.StdNetBind.%s is a %s, not a %s", f.name, sf.Type, f.typ)
		}
	}
	return nil
}

// newFamilyBind wraps b if it is a *conn.StdNetBind; otherwise (a test
// bind) it returns b. The error says why a StdNetBind could not be
// wrapped; b is returned with it and works, with the bug.
func newFamilyBind(b conn.Bind) (conn.Bind, error) {
	std, ok := b.(*conn.StdNetBind)
	if !ok {
		return b, nil
	}
	if errNoFamilyBind != nil {
		return b, fmt.Errorf("ipv6 sends beside ipv4 ones may go to wrong addresses (wireguard-go#135): %w", errNoFamilyBind)
	}
	return &familyBind{StdNetBind: std}, nil
}

func (b *familyBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	// Held across the open, so that IPv4 sends wait for the second
	// bind instead of failing in between.
	b.mu.Lock()
	defer b.mu.Unlock()
	fns, actual, err := b.StdNetBind.Open(port)
	if err != nil {
		return fns, actual, err
	}
	v4 := conn.NewStdNetBind().(*conn.StdNetBind)
	copySendFields(v4, b.StdNetBind)
	b.v4 = v4
	return fns, actual, nil
}

func (b *familyBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	// v4 only borrowed the socket: closing the bind closes it.
	b.v4 = nil
	return b.StdNetBind.Close()
}

func (b *familyBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	// StdNetBind takes its IPv6 path for Is6 (IPv4-mapped included).
	if ep.DstIP().Is6() {
		return b.StdNetBind.Send(bufs, ep)
	}
	b.mu.RLock()
	v4 := b.v4
	b.mu.RUnlock()
	if v4 == nil {
		// Closed: what StdNetBind answers without a socket.
		return syscall.EAFNOSUPPORT
	}
	return v4.Send(bufs, ep)
}

// copySendFields sets dst's sendFields to src's. Both are StdNetBinds that
// no other goroutine uses yet (src has just been opened; its Sends wait on
// familyBind.mu).
func copySendFields(dst, src *conn.StdNetBind) {
	d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
	for _, f := range sendFields {
		df, sf := d.FieldByName(f.name), s.FieldByName(f.name)
		reflect.NewAt(df.Type(), unsafe.Pointer(df.UnsafeAddr())).Elem().
			Set(reflect.NewAt(sf.Type(), unsafe.Pointer(sf.UnsafeAddr())).Elem())
	}
}
