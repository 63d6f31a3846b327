package wgdev

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestNewValidates(t *testing.T) {
	key := mustKey(t)
	good := Config{Name: "wgmesh0", MTU: 1420, PrivateKey: key, ListenPort: 51820}
	tests := []struct {
		name   string
		mutate func(*Config)
		ok     bool
	}{
		{"good", func(*Config) {}, true},
		{"random port", func(c *Config) { c.ListenPort = 0 }, true},
		{"empty name", func(c *Config) { c.Name = "" }, false},
		{"name too long", func(c *Config) { c.Name = "wgmesh-0123456789" }, false},
		{"mtu too small", func(c *Config) { c.MTU = 100 }, false},
		{"mtu too large", func(c *Config) { c.MTU = 70000 }, false},
		{"port negative", func(c *Config) { c.ListenPort = -1 }, false},
		{"port too large", func(c *Config) { c.ListenPort = 65536 }, false},
		{"zero key", func(c *Config) { c.PrivateKey = wgtypes.Key{} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mutate(&cfg)
			_, err := New(cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New error = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// testNode is one in-memory device: wireguard-go's channel TUN and channel
// bind, and our UAPI server on a unix socket in a temp dir.
type testNode struct {
	dev  *Device
	tun  *tuntest.ChannelTUN
	key  wgtypes.Key
	sock string
	ip   netip.Addr
}

func newTestPair(t *testing.T) [2]*testNode {
	t.Helper()
	return newTestPairWith(t, func(*Config) {})
}

// newTestPairWith is newTestPair with each Config changed by edit first.
func newTestPairWith(t *testing.T, edit func(*Config)) [2]*testNode {
	t.Helper()
	binds := bindtest.NewChannelBinds()
	dir := t.TempDir()
	var nodes [2]*testNode
	for i := range nodes {
		n := &testNode{
			tun:  tuntest.NewChannelTUN(),
			key:  mustKey(t),
			sock: filepath.Join(dir, fmt.Sprintf("wg%d.sock", i)),
			ip:   netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 1}),
		}
		cfg := Config{
			Name:       fmt.Sprintf("wgtest%d", i),
			MTU:        1420,
			PrivateKey: n.key,
			tun:        n.tun.TUN(),
			bind:       binds[i],
			listen:     func(string) (net.Listener, error) { return net.Listen("unix", n.sock) },
			linkUp:     func(string) error { return nil },
		}
		edit(&cfg)
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Open(); err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { d.Close() })
		n.dev = d
		nodes[i] = n
	}
	return nodes
}

func TestDeviceHandshakeAndUAPIRoundTrip(t *testing.T) {
	nodes := newTestPair(t)

	// The UAPI socket reports what Open configured.
	for i, n := range nodes {
		got := uapiGet(t, n.sock)
		if want := hex.EncodeToString(n.key[:]); got["private_key"] != want {
			t.Errorf("node %d: private_key over UAPI does not match the configured key", i)
		}
		if got["listen_port"] == "" || got["listen_port"] == "0" {
			t.Errorf("node %d: listen_port = %q, want the bound port", i, got["listen_port"])
		}
	}

	// Configure each as the other's peer over the UAPI socket, like wg(8).
	for i, n := range nodes {
		other := nodes[1-i]
		pub := other.key.PublicKey()
		port := uapiGet(t, other.sock)["listen_port"]
		uapiSet(t, n.sock, fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\n",
			hex.EncodeToString(pub[:]), port, other.ip))
	}

	// A packet written into node 0's TUN comes out of node 1's TUN.
	ping := tuntest.Ping(nodes[1].ip, nodes[0].ip)
	select {
	case nodes[0].tun.Outbound <- ping:
	case <-time.After(5 * time.Second):
		t.Fatal("node 0 did not read the packet from its TUN")
	}
	select {
	case got := <-nodes[1].tun.Inbound:
		if string(got) != string(ping) {
			t.Fatalf("node 1 received a different packet")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("packet did not cross the tunnel")
	}

	got := uapiGet(t, nodes[0].sock)
	if got["last_handshake_time_sec"] == "" || got["last_handshake_time_sec"] == "0" {
		t.Errorf("no handshake recorded: %v", got)
	}
	if got["rx_bytes"] == "0" || got["tx_bytes"] == "0" {
		t.Errorf("no traffic counted: rx=%s tx=%s", got["rx_bytes"], got["tx_bytes"])
	}
}

func TestDeviceStopsWhenUAPIFails(t *testing.T) {
	var ln net.Listener
	sock := filepath.Join(t.TempDir(), "wg.sock")
	d, err := New(Config{
		Name: "wgtest", MTU: 1420, PrivateKey: mustKey(t),
		tun:  tuntest.NewChannelTUN().TUN(),
		bind: bindtest.NewChannelBinds()[0],
		listen: func(string) (net.Listener, error) {
			var err error
			ln, err = net.Listen("unix", sock)
			return ln, err
		},
		linkUp: func(string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Open(); err != nil {
		t.Fatal(err)
	}
	ln.Close() // as if the socket went away under us
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("device kept running without its UAPI socket")
	}
	if d.Err() == nil {
		t.Error("Err() = nil after a failure")
	}
	if err := d.Open(); !errors.Is(err, ErrOpen) {
		t.Errorf("second Open = %v, want ErrOpen", err)
	}
}

func TestDeviceRunReturnsOnCancel(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "wg.sock")
	d, err := New(Config{
		Name: "wgtest", MTU: 1420, PrivateKey: mustKey(t),
		tun:    tuntest.NewChannelTUN().TUN(),
		bind:   bindtest.NewChannelBinds()[0],
		listen: func(string) (net.Listener, error) { return net.Listen("unix", sock) },
		linkUp: func(string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	// Wait until it serves UAPI, then cancel.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("UAPI socket never came up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if d.Err() != nil {
		t.Errorf("Err() = %v after a requested close", d.Err())
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("UAPI socket still accepts after close")
	}
}

func TestOpenFailureUndoes(t *testing.T) {
	ct := tuntest.NewChannelTUN()
	d, err := New(Config{
		Name: "wgtest", MTU: 1420, PrivateKey: mustKey(t),
		tun:    ct.TUN(),
		bind:   bindtest.NewChannelBinds()[0],
		listen: func(string) (net.Listener, error) { return nil, errors.New("no socket for you") },
		linkUp: func(string) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Open(); err == nil {
		t.Fatal("Open succeeded without a UAPI socket")
	}
	// The device closed its TUN: the channel TUN closes its event channel
	// on close.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ct.TUN().Events():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("TUN left open after a failed Open")
		}
	}
}

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// uapiGet speaks the cross-platform UAPI protocol, as wg(8) does.
func uapiGet(t *testing.T, sock string) map[string]string {
	t.Helper()
	lines := uapiDo(t, sock, "get=1\n\n")
	m := map[string]string{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	if m["errno"] != "0" {
		t.Fatalf("get: errno=%q", m["errno"])
	}
	return m
}

func uapiSet(t *testing.T, sock, body string) {
	t.Helper()
	lines := uapiDo(t, sock, "set=1\n"+body+"\n")
	if len(lines) != 1 || lines[0] != "errno=0" {
		t.Fatalf("set: %v", lines)
	}
}

func uapiDo(t *testing.T, sock, req string) []string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if sc.Text() == "" {
			break
		}
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}
