// Package wgdev runs wgmesh's WireGuard interface: a wireguard-go device on a
// kernel TUN, with its UAPI socket in /var/run/wireguard so that the stock
// `wg` tool and wgctrl read and configure it. It also holds the node's
// private key file handling and a mesh.Device adapter over wgctrl.
package wgdev

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

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

// DefaultBusyTimeout is Config.BusyTimeout's default.
const DefaultBusyTimeout = 10 * time.Second

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
	// NoOffload opens the TUN without IFF_VNET_HDR: no TSO/GSO/GRO between
	// the kernel and wireguard-go, one packet per read and write (reads
	// are batched by draining the queue: drainTUN). That is the path
	// kernels without TUN offloads take anyway; the switch exists to
	// measure and test it (integration/bench) and as an escape hatch.
	NoOffload bool
	// Peers are configured together with the private key, before the
	// device is up, e.g. the peers a previous run had (restored from the
	// agent's state file): after a restart the data path then works
	// before the node list is even read. Open starts a handshake with
	// every one that has an endpoint, so the peers switch to the new
	// session at once instead of after their rekey timeout. Add-only:
	// see ErrInitialPeer.
	Peers []wgtypes.PeerConfig
	// MaxInflight bounds the packets per direction wireguard-go holds
	// between reading and handing them on (see DefaultMaxInflight); zero
	// means DefaultMaxInflight, negative no bound (wireguard-go as is).
	MaxInflight int
	// BusyTimeout is how long Open keeps retrying a TUN another process
	// still holds (a previous agent shutting down); zero means
	// DefaultBusyTimeout.
	BusyTimeout time.Duration
	Logger      *slog.Logger

	// Test seams, set only by this package's tests.
	tun     tun.Device                              // nil: the persistent kernel TUN Name
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

	mu         sync.Mutex
	opened     bool
	reattached bool
	name       string
	dev        *device.Device
	uapi       net.Listener
	greeter    *greeter
	hold       *holdBind
	// self is the device's public key, for the initiator of a fresh
	// pair (quiet.go); Local.ConfigureDevice keeps it current.
	self wgtypes.Key
	// removed remembers the peers Local removed, for peers that come
	// back (rejoin.go).
	removed removals

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

// Open creates the TUN, or re-attaches to the persistent one a previous
// run left (keeping its addresses and routes), starts wireguard-go on it
// with the private key, listen port and initial peers, brings the link up
// and serves the UAPI socket. On error everything made so far is undone,
// except a TUN that existed before.
//
// Close leaves the TUN in place: it is persistent, so that routes through
// it, and with them the node's fail-closed behaviour, survive the agent
// (packets routed into a TUN nobody reads are dropped). DeleteLink removes
// it for good.
func (d *Device) Open() (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.opened {
		return ErrOpen
	}
	d.opened = true

	peerConf, err := uapiPeers(d.cfg.Peers)
	if err != nil {
		return err
	}
	tdev := d.cfg.tun
	if tdev == nil {
		// Opened as wireguard-go's CreateTUN does (IFF_VNET_HDR, and
		// it enables TSO/USO itself), plus TUNSETPERSIST; we pass the
		// TUN through untouched so GSO/GRO stay on.
		tdev, d.reattached, err = openPersistentTUN(d.cfg.Name, d.cfg.MTU, d.cfg.NoOffload, cmp.Or(d.cfg.BusyTimeout, DefaultBusyTimeout))
		if err != nil {
			return fmt.Errorf("create tun %s: %w", d.cfg.Name, err)
		}
		if !d.reattached {
			defer func() {
				if err != nil {
					// Ours from this Open only: leave no
					// persistent interface behind.
					if derr := DeleteLink(d.cfg.Name); derr != nil {
						d.log.Warn("could not remove the tun after a failed open", "err", derr)
					}
				}
			}()
		}
	}
	if n, nerr := tdev.Name(); nerr == nil {
		d.name = n
	}
	bind := d.cfg.bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	bind, ferr := newFamilyBind(bind)
	if ferr != nil {
		d.log.Warn("running on wireguard-go's plain bind", "err", ferr)
	}

	hold := newHoldBind(bind)
	bind = hold
	if d.cfg.MaxInflight >= 0 {
		tdev, bind = bound(tdev, bind, cmp.Or(d.cfg.MaxInflight, DefaultMaxInflight))
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
	if err := dev.IpcSet(uapiConf + peerConf); err != nil {
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
	self := d.cfg.PrivateKey.PublicKey()
	greeter := newGreeter(dev, d.log, self)
	defer func() {
		if err != nil {
			greeter.close()
		}
	}()
	// Restored peers are greeted from here whichever key is smaller:
	// they hold sessions with our previous incarnation and have no
	// reason to initiate.
	greeter.greetAll(initialWithEndpoint(d.cfg.Peers)...)

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
	d.greeter = greeter
	d.hold = hold
	d.self = self
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
		"public_key", d.cfg.PrivateKey.PublicKey().String(), "reattached", d.reattached,
		"initial_peers", len(d.cfg.Peers))
	return nil
}

// initialWithEndpoint returns the keys of the initial peers that have an
// endpoint: Open greets them (see Greet). After a restart the peers still
// hold sessions with our previous incarnation; a peer that only receives
// from us would otherwise keep sending on a session we no longer have until
// its own timers give up.
func initialWithEndpoint(peers []wgtypes.PeerConfig) []wgtypes.Key {
	var keys []wgtypes.Key
	for _, p := range peers {
		if p.Endpoint != nil {
			keys = append(keys, p.PublicKey)
		}
	}
	return keys
}

// Greet has the device start the first handshake with each of the given
// peers (those it has; a peer without an endpoint cannot be greeted) and
// watch it until a handshake completes. Of a pair, the smaller key sends
// an initiation now and initiates again while no handshake completes; the
// larger key waits for it and initiates only if none came after
// answerWait (see greet.go and quiet.go). Call it for peers just added, so
// that a session exists before the first packet needs one. Before Open
// and after Close it does nothing.
func (d *Device) Greet(keys ...wgtypes.Key) {
	d.mu.Lock()
	g := d.greeter
	d.mu.Unlock()
	if g != nil && len(keys) > 0 {
		g.greet(keys...)
	}
}

// GreetSilent is Greet for those of keys that have no session yet; call it
// for peers whose endpoint was just written: a peer added without an
// endpoint (a DNS name that did not resolve yet) could not be greeted when
// it was added. Peers with a session are left alone.
func (d *Device) GreetSilent(keys ...wgtypes.Key) {
	d.mu.Lock()
	g := d.greeter
	d.mu.Unlock()
	if g != nil && len(keys) > 0 {
		g.greetSilent(keys...)
	}
}

// selfKey returns the device's public key as last configured through Open
// or Local.
func (d *Device) selfKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.self
}

// setSelf records a new public key of the device (a key rotation).
func (d *Device) setSelf(k wgtypes.Key) {
	d.mu.Lock()
	d.self = k
	g := d.greeter
	d.mu.Unlock()
	if g != nil {
		g.setSelf(k)
	}
}

// Reattached reports whether Open found the TUN left by a previous run.
func (d *Device) Reattached() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reattached
}

// SocketDir is where wireguard-go's ipc package makes UAPI sockets on Linux
// and where `wg` and wgctrl look for them. ipc keeps the path unexported,
// so the tools that need the file (to wait for it, remove a stale one or
// name it in an error) take it from here; TestSocketPath checks it
// against what ipc really creates.
const SocketDir = "/var/run/wireguard"

// SocketPath is the UAPI socket of interface name.
func SocketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// listenUAPI creates SocketPath(name), the path `wg` and wgctrl look in.
// ipc.UAPIListen removes the socket again when the listener closes, and
// fails Accept if someone deletes it.
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
	uapi, dev, g := d.uapi, d.dev, d.greeter
	d.greeter = nil
	d.mu.Unlock()
	if g != nil {
		g.close()
	}
	if uapi != nil {
		uapi.Close() // unlinks the socket
	}
	if dev != nil {
		dev.Close()
	}
	d.log.Info("wireguard device closed")
}

// Close stops serving the UAPI socket (removing it) and closes the device and
// its TUN; the persistent interface itself stays (see Open). It is safe to
// call more than once and before Open.
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
