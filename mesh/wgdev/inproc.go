package wgdev

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// Local is a mesh.Device that reads and configures the running device in
// this process, through wireguard-go's IPC operations, instead of over the
// UAPI socket: no socket round trip, no second copy of the text, and a
// parser that reads only what wgtypes holds. wireguard-go offers no other
// way to read a peer's endpoint and allowed IPs, so the text protocol
// stays; at 5000 peers the socket path was most of a full pass (see
// docs/benchmarks.md).
type Local struct {
	d *Device

	mu  sync.Mutex
	buf bytes.Buffer // the get text, reused: it is a megabyte at 5000 peers
}

var _ mesh.Device = (*Local)(nil)

// Local returns the in-process mesh.Device of d. It fails with ErrClosed
// until Open succeeded and after Close.
func (d *Device) Local() *Local { return &Local{d: d} }

func (l *Local) running() (*Device, error) {
	l.d.mu.Lock()
	defer l.d.mu.Unlock()
	if l.d.dev == nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", l.d.name, ErrClosed)
	}
	select {
	case <-l.d.done:
		return nil, fmt.Errorf("wireguard device %s: %w", l.d.name, ErrClosed)
	default:
	}
	return l.d, nil
}

// Device reads the device's configuration and peers.
func (l *Local) Device() (*wgtypes.Device, error) {
	d, err := l.running()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Reset()
	if err := d.dev.IpcGetOperation(&l.buf); err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", d.name, err)
	}
	dev, err := parseGet(l.buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", d.name, err)
	}
	dev.Name = d.name
	return dev, nil
}

// ConfigureDevice applies cfg, with the semantics wgctrl gives it over the
// socket. ReplacePeers is refused (ErrReplacePeers) as by Client.
func (l *Local) ConfigureDevice(cfg wgtypes.Config) error {
	if cfg.ReplacePeers {
		return ErrReplacePeers
	}
	d, err := l.running()
	if err != nil {
		return err
	}
	self := d.selfKey()
	if cfg.PrivateKey != nil {
		self = cfg.PrivateKey.PublicKey()
	}
	// New peers that the other side initiates to are added quietly (see
	// quiet.go): no initiation from here can cross the other's. Peers
	// coming back soon after their removal are not, and are greeted at
	// once (rejoin.go): the other side still holds a session with us.
	now := time.Now()
	back := d.removed.returning(d.dev, cfg, now)
	err = quietly(d.dev, d.hold, self, cfg, back, func() error {
		return d.dev.IpcSetOperation(strings.NewReader(renderSet(cfg)))
	})
	d.removed.note(cfg, now)
	d.greetReturning(back)
	if err != nil {
		return fmt.Errorf("configure wireguard device %s: %w", d.name, err)
	}
	if cfg.PrivateKey != nil {
		d.setSelf(self)
	}
	return nil
}

// renderSet renders cfg in the UAPI "set" syntax (without the "set=1"
// header, which the socket handler consumes).
func renderSet(cfg wgtypes.Config) string {
	var b strings.Builder
	line := func(k, v string) {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
		b.WriteByte('\n')
	}
	if cfg.PrivateKey != nil {
		line("private_key", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		line("listen_port", strconv.Itoa(*cfg.ListenPort))
	}
	if cfg.FirewallMark != nil {
		line("fwmark", strconv.Itoa(*cfg.FirewallMark))
	}
	for _, p := range cfg.Peers {
		line("public_key", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			line("remove", "true")
			continue
		}
		if p.UpdateOnly {
			line("update_only", "true")
		}
		if p.PresharedKey != nil {
			line("preshared_key", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			// UDPAddr.String brackets IPv6 as the protocol wants.
			line("endpoint", p.Endpoint.String())
		}
		if p.PersistentKeepaliveInterval != nil {
			line("persistent_keepalive_interval", strconv.Itoa(int(p.PersistentKeepaliveInterval.Seconds())))
		}
		if p.ReplaceAllowedIPs {
			line("replace_allowed_ips", "true")
		}
		for _, ip := range p.AllowedIPs {
			line("allowed_ip", ip.String())
		}
	}
	return b.String()
}

// parseGet parses the UAPI "get" answer into wgtypes, as wgctrl does. The
// many small values (addresses, masks, endpoints) are cut from a few
// arrays sized up front instead of allocated one by one: at 5000 peers the
// allocations were half the parse.
func parseGet(text []byte) (*wgtypes.Device, error) {
	dev := &wgtypes.Device{Type: wgtypes.Userspace}
	eps, ips := bytes.Count(text, []byte("\nendpoint=")), bytes.Count(text, []byte("\nallowed_ip="))
	// 16 bytes per endpoint address, 16+16 per allowed IP and its mask at
	// most.
	a := &arena{eps: make([]net.UDPAddr, 0, eps+1), bytes: make([]byte, 0, 16*eps+32*ips+64)}
	dev.Peers = make([]wgtypes.Peer, 0, bytes.Count(text, []byte("public_key=")))
	var peer *wgtypes.Peer
	var hsSec, hsNsec int64
	flush := func() {
		if peer != nil && (hsSec != 0 || hsNsec != 0) {
			peer.LastHandshakeTime = time.Unix(hsSec, hsNsec)
		}
		hsSec, hsNsec = 0, 0
	}
	for len(text) > 0 {
		var ln []byte
		ln, text, _ = bytes.Cut(text, []byte{'\n'})
		if len(ln) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(ln, []byte{'='})
		if !ok {
			return nil, fmt.Errorf("malformed line %q", ln)
		}
		var err error
		switch string(k) { // no allocation: the compiler compares in place
		case "private_key":
			err = parseHexKey(v, &dev.PrivateKey)
			dev.PublicKey = dev.PrivateKey.PublicKey()
		case "listen_port":
			dev.ListenPort, err = atoi(v)
		case "fwmark":
			dev.FirewallMark, err = atoi(v)
		case "public_key":
			flush()
			dev.Peers = append(dev.Peers, wgtypes.Peer{})
			peer = &dev.Peers[len(dev.Peers)-1]
			err = parseHexKey(v, &peer.PublicKey)
		case "errno":
			if string(v) != "0" {
				err = fmt.Errorf("errno %s", v)
			}
		default:
			if peer == nil {
				return nil, fmt.Errorf("line %q before any peer", ln)
			}
			err = parsePeerLine(peer, string(k), v, &hsSec, &hsNsec, a)
		}
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", ln, err)
		}
	}
	flush()
	return dev, nil
}

// arena hands out the small values of one parse from shared arrays; when
// one is full, append moves on to a new array and the old slices stay
// valid.
type arena struct {
	eps   []net.UDPAddr
	bytes []byte
}

func (a *arena) take(n int) []byte {
	if len(a.bytes)+n > cap(a.bytes) {
		a.bytes = make([]byte, 0, max(4096, n))
	}
	a.bytes = a.bytes[:len(a.bytes)+n]
	return a.bytes[len(a.bytes)-n : len(a.bytes) : len(a.bytes)]
}

func (a *arena) ip(addr netip.Addr) net.IP {
	if addr.Is4() {
		b := a.take(4)
		v := addr.As4()
		copy(b, v[:])
		return b
	}
	b := a.take(16)
	v := addr.As16()
	copy(b, v[:])
	return b
}

func (a *arena) endpoint(ap netip.AddrPort) *net.UDPAddr {
	if len(a.eps) == cap(a.eps) {
		a.eps = make([]net.UDPAddr, 0, 64)
	}
	a.eps = append(a.eps, net.UDPAddr{IP: a.ip(ap.Addr()), Port: int(ap.Port()), Zone: ap.Addr().Zone()})
	return &a.eps[len(a.eps)-1]
}

func (a *arena) mask(bits, total int) net.IPMask {
	m := net.IPMask(a.take(total / 8))
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = ^byte(0xff >> bits)
			bits = 0
		}
	}
	return m
}

// atoi parses a non-negative decimal without making a string of it.
func atoi(v []byte) (int, error) {
	if len(v) == 0 || len(v) > 18 {
		return 0, fmt.Errorf("bad number %q", v)
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", v)
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

func parsePeerLine(p *wgtypes.Peer, k string, v []byte, hsSec, hsNsec *int64, a *arena) error {
	var err error
	var n int
	switch k {
	case "preshared_key":
		err = parseHexKey(v, &p.PresharedKey)
	case "protocol_version":
		p.ProtocolVersion, err = atoi(v)
	case "endpoint":
		var ap netip.AddrPort
		if ap, err = netip.ParseAddrPort(string(v)); err == nil {
			p.Endpoint = a.endpoint(ap)
		}
	case "last_handshake_time_sec":
		n, err = atoi(v)
		*hsSec = int64(n)
	case "last_handshake_time_nsec":
		n, err = atoi(v)
		*hsNsec = int64(n)
	case "tx_bytes":
		n, err = atoi(v)
		p.TransmitBytes = int64(n)
	case "rx_bytes":
		n, err = atoi(v)
		p.ReceiveBytes = int64(n)
	case "persistent_keepalive_interval":
		n, err = atoi(v)
		p.PersistentKeepaliveInterval = time.Duration(n) * time.Second
	case "allowed_ip":
		var pf netip.Prefix
		if pf, err = netip.ParsePrefix(string(v)); err == nil {
			p.AllowedIPs = append(p.AllowedIPs, net.IPNet{IP: a.ip(pf.Addr()), Mask: a.mask(pf.Bits(), pf.Addr().BitLen())})
		}
	}
	// Unknown keys are skipped: a newer wireguard-go may add some.
	return err
}

func parseHexKey(v []byte, k *wgtypes.Key) error {
	if hex.DecodedLen(len(v)) != len(k) {
		return fmt.Errorf("key of %d hex digits", len(v))
	}
	_, err := hex.Decode(k[:], v)
	return err
}
