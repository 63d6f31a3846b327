package wgdev

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
	var buf bytes.Buffer
	if err := d.dev.IpcGetOperation(&buf); err != nil {
		return nil, fmt.Errorf("read wireguard device %s: %w", d.name, err)
	}
	dev, err := parseGet(buf.Bytes())
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
	if err := d.dev.IpcSetOperation(strings.NewReader(renderSet(cfg))); err != nil {
		return fmt.Errorf("configure wireguard device %s: %w", d.name, err)
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

// parseGet parses the UAPI "get" answer into wgtypes, as wgctrl does.
func parseGet(text []byte) (*wgtypes.Device, error) {
	dev := &wgtypes.Device{Type: wgtypes.Userspace}
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
			dev.ListenPort, err = strconv.Atoi(string(v))
		case "fwmark":
			dev.FirewallMark, err = strconv.Atoi(string(v))
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
			err = parsePeerLine(peer, string(k), v, &hsSec, &hsNsec)
		}
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", ln, err)
		}
	}
	flush()
	// The peers' slices are appended to while reading; pointers into
	// dev.Peers were only used for the current one.
	return dev, nil
}

func parsePeerLine(p *wgtypes.Peer, k string, v []byte, hsSec, hsNsec *int64) error {
	var err error
	switch k {
	case "preshared_key":
		err = parseHexKey(v, &p.PresharedKey)
	case "protocol_version":
		p.ProtocolVersion, err = strconv.Atoi(string(v))
	case "endpoint":
		var ap netip.AddrPort
		if ap, err = netip.ParseAddrPort(string(v)); err == nil {
			p.Endpoint = net.UDPAddrFromAddrPort(ap)
		}
	case "last_handshake_time_sec":
		*hsSec, err = strconv.ParseInt(string(v), 10, 64)
	case "last_handshake_time_nsec":
		*hsNsec, err = strconv.ParseInt(string(v), 10, 64)
	case "tx_bytes":
		p.TransmitBytes, err = strconv.ParseInt(string(v), 10, 64)
	case "rx_bytes":
		p.ReceiveBytes, err = strconv.ParseInt(string(v), 10, 64)
	case "persistent_keepalive_interval":
		var s int
		if s, err = strconv.Atoi(string(v)); err == nil {
			p.PersistentKeepaliveInterval = time.Duration(s) * time.Second
		}
	case "allowed_ip":
		var pf netip.Prefix
		if pf, err = netip.ParsePrefix(string(v)); err == nil {
			p.AllowedIPs = append(p.AllowedIPs, net.IPNet{
				IP:   net.IP(pf.Addr().AsSlice()),
				Mask: net.CIDRMask(pf.Bits(), pf.Addr().BitLen()),
			})
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
