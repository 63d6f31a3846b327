// Package wgdev runs wgmesh's WireGuard interface: a wireguard-go device on a
// kernel TUN, with its UAPI socket in /var/run/wireguard so that the stock
// `wg` tool and wgctrl read and configure it. It also holds the node's
// private key file handling and a mesh.Device adapter over wgctrl.
package wgdev

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Sentinel errors.
var (
	ErrClosed = errors.New("wireguard device closed")
	ErrOpen   = errors.New("wireguard device already opened")
)

// maxIfNameLen is IFNAMSIZ-1: Linux interface names are at most 15 bytes.
const maxIfNameLen = 15

// Config describes the device. The zero values of the test seams mean the
// real kernel TUN, UDP sockets and UAPI socket.
type Config struct {
	// Name of the TUN interface, e.g. "wgmesh0".
	Name string
	// MTU of the TUN interface.
	MTU int
	// PrivateKey is the node's WireGuard key.
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port; 0 lets the kernel pick one.
	ListenPort int
	Logger     *slog.Logger

	// Test seams, set only by this package's tests.
	tun     tun.Device                              // nil: tun.CreateTUN(Name, MTU)
	bind    conn.Bind                               // nil: conn.NewDefaultBind()
	listen  func(name string) (net.Listener, error) // nil: UAPI socket in /var/run/wireguard
	linkUp  func(name string) error                 // nil: netlink link set up
	afterUp func(*device.Device)                    // observes the device once configured
}

// Device is a running wireguard-go device. Create it with New, start it with
// Open (or Run), stop it with Close.
type Device struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	opened bool
	name   string
	dev    *device.Device
	uapi   net.Listener

	closeOnce sync.Once
	done      chan struct{} // closed once the device has stopped
	errMu     sync.Mutex
	err       error // why the device stopped on its own, if it did
}

// New validates cfg. It does no I/O.
func New(cfg Config) (*Device, error) {
	if cfg.Name == "" {
		return nil, errors.New("wgdev: interface name is empty")
	}
	if len(cfg.Name) > maxIfNameLen {
		return nil, fmt.Errorf("wgdev: interface name %q longer than %d bytes", cfg.Name, maxIfNameLen)
	}
	// 1280 is IPv6's minimum; WireGuard adds 80 bytes on top of it.
	if cfg.MTU < 576 || cfg.MTU > device.MaxContentSize {
		return nil, fmt.Errorf("wgdev: mtu %d out of range [576, %d]", cfg.MTU, device.MaxContentSize)
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("wgdev: listen port %d out of range", cfg.ListenPort)
	}
	if cfg.PrivateKey == (wgtypes.Key{}) {
		return nil, errors.New("wgdev: private key is zero")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Device{
		cfg:  cfg,
		log:  log.With("interface", cfg.Name),
		name: cfg.Name,
		done: make(chan struct{}),
	}, nil
}

// Name is the interface name the kernel gave the TUN (equal to Config.Name).
func (d *Device) Name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.name
}

// Open creates the TUN, starts wireguard-go on it with the private key and
// listen port, brings the link up and serves the UAPI socket. On error
// everything made so far is undone.
func (d *Device) Open() (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.opened {
		return ErrOpen
	}
	d.opened = true

	tdev := d.cfg.tun
	if tdev == nil {
		// wireguard-go's CreateTUN asks for IFF_VNET_HDR and enables
		// TSO/USO offloads (TUNSETOFFLOAD) itself when the kernel
		// supports them; we pass the TUN through untouched so GSO/GRO
		// stay on. Do not wrap it or open it differently.
		tdev, err = tun.CreateTUN(d.cfg.Name, d.cfg.MTU)
		if err != nil {
			return fmt.Errorf("create tun %s: %w", d.cfg.Name, err)
		}
	}
	if n, nerr := tdev.Name(); nerr == nil {
		d.name = n
	}
	bind := d.cfg.bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}

	dev := device.NewDevice(tdev, bind, wgLogger(d.log))
	defer func() {
		if err != nil {
			dev.Close() // also closes the TUN
		}
	}()

	// The key goes to the device over its in-process IPC, never into a
	// log line or an error.
	uapiConf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n",
		hex.EncodeToString(d.cfg.PrivateKey[:]), d.cfg.ListenPort)
	if err := dev.IpcSet(uapiConf); err != nil {
		return fmt.Errorf("configure device: %w", err)
	}

	// The kernel link must be up for packets to reach the TUN; wireguard-go
	// opens its UDP sockets when it sees the link come up. dev.Up makes
	// that independent of event timing.
	linkUp := d.cfg.linkUp
	if linkUp == nil {
		linkUp = setLinkUp
	}
	if err := linkUp(d.name); err != nil {
		return fmt.Errorf("set link %s up: %w", d.name, err)
	}
	if err := dev.Up(); err != nil {
		return fmt.Errorf("bring device up: %w", err)
	}

	listen := d.cfg.listen
	if listen == nil {
		listen = listenUAPI
	}
	uapi, err := listen(d.name)
	if err != nil {
		return fmt.Errorf("uapi socket for %s: %w", d.name, err)
	}

	d.dev = dev
	d.uapi = uapi
	go d.serveUAPI(uapi, dev)
	go func() {
		// wireguard-go closes itself when its TUN goes away (e.g.
		// `ip link del`); that is a failure unless we asked for it.
		<-dev.Wait()
		d.stop(fmt.Errorf("device %s stopped: %w", d.name, ErrClosed))
	}()
	if d.cfg.afterUp != nil {
		d.cfg.afterUp(dev)
	}
	d.log.Info("wireguard device up", "mtu", d.cfg.MTU, "listen_port", d.cfg.ListenPort,
		"public_key", d.cfg.PrivateKey.PublicKey().String())
	return nil
}

// listenUAPI creates /var/run/wireguard/<name>.sock, the path `wg` and wgctrl
// look in. ipc.UAPIListen removes the socket again when the listener closes,
// and fails Accept if someone deletes it.
func listenUAPI(name string) (net.Listener, error) {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, err
	}
	defer f.Close() // UAPIListen works on its own dup of the fd
	return ipc.UAPIListen(name, f)
}

// serveUAPI answers wg/wgctrl requests until the listener fails. A failure
// we did not cause (the socket file was deleted) stops the device: a node
// whose WireGuard nobody can configure must restart, not limp on.
func (d *Device) serveUAPI(l net.Listener, dev *device.Device) {
	for {
		c, err := l.Accept()
		if err != nil {
			d.stop(fmt.Errorf("uapi socket for %s: %w", d.name, err))
			return
		}
		go dev.IpcHandle(c)
	}
}

// stop records why the device stopped (first reason wins) and tears it down.
func (d *Device) stop(reason error) {
	d.closeOnce.Do(func() {
		d.errMu.Lock()
		d.err = reason
		d.errMu.Unlock()
		d.teardown()
		close(d.done)
	})
}

func (d *Device) teardown() {
	d.mu.Lock()
	uapi, dev := d.uapi, d.dev
	d.mu.Unlock()
	if uapi != nil {
		uapi.Close() // unlinks the socket
	}
	if dev != nil {
		dev.Close()
	}
	d.log.Info("wireguard device closed")
}

// Close stops serving the UAPI socket (removing it) and closes the device and
// its TUN. It is safe to call more than once and before Open.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.teardown()
		close(d.done)
	})
	return nil
}

// Done is closed once the device has stopped, by Close or on its own.
func (d *Device) Done() <-chan struct{} { return d.done }

// Err reports why the device stopped on its own; nil after a plain Close.
func (d *Device) Err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

// Run opens the device, keeps it until ctx is cancelled or the device fails,
// then closes it. It returns nil on cancellation.
func (d *Device) Run(ctx context.Context) error {
	if err := d.Open(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		d.Close()
		return nil
	case <-d.done:
		return d.Err()
	}
}

// wgLogger routes wireguard-go's printf logging into slog. Its verbose
// stream is per-packet-event chatter, hence Debug.
func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...), "source", "wireguard-go")
			}
		},
		Errorf: func(format string, args ...any) {
			log.Warn(fmt.Sprintf(format, args...), "source", "wireguard-go")
		},
	}
}
