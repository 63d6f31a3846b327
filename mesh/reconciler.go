package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Defaults for Config fields left zero.
const (
	DefaultResync        = 30 * time.Second
	DefaultLookupTimeout = 5 * time.Second
)

// ErrInvalidConfig is wrapped by Config.Validate.
var ErrInvalidConfig = errors.New("invalid reconciler config")

// Config configures a Reconciler.
type Config struct {
	// NodeName is this node's Node object name.
	NodeName string
	// PublicKey is this node's WireGuard public key at start, published
	// on its Node. Key rotation replaces it at run time; see
	// Reconciler.PublicKey.
	PublicKey wgtypes.Key
	// Keys stores a new private key when the own Node asks for a rotation
	// (AnnotationRotateKey). Nil disables rotation: requests are logged,
	// not acted on.
	Keys KeyStore
	// GenerateKey makes a new private key; nil means
	// wgtypes.GeneratePrivateKey. For tests.
	GenerateKey func() (wgtypes.Key, error)
	// ListenPort is the WireGuard UDP port, published with the InternalIP
	// unless EndpointOverride is set.
	ListenPort int
	// EndpointOverride ("host:port") is published instead of
	// InternalIP:ListenPort, e.g. a NAT's public address. Optional.
	EndpointOverride string
	// DefaultKeepalive applies to peers when neither their Node nor our
	// own has a keepalive annotation; 0 disables keepalives.
	DefaultKeepalive time.Duration
	// MTU of the WireGuard interface, passed to the dataplane.
	MTU int
	// DetectMTU, when set, gives the WireGuard interface's MTU from the
	// underlay as it is now; Run calls it every MTUCheck (default
	// DefaultMTUCheck) and applies a changed value with a full pass. An
	// underlay MTU lowered under a fixed tunnel MTU drops every full-size
	// encrypted packet at the sender (EMSGSIZE, no ICMP to the pod), so
	// established TCP flows stall; with the tunnel lowered the kernel
	// tells the pods (fragmentation needed) and they shrink their segments.
	DetectMTU func() (int, error)
	MTUCheck  time.Duration

	Source    NodeSource
	Device    Device
	Dataplane Dataplane
	// Resolver resolves endpoint DNS names; nil means only IP literal
	// endpoints get an address.
	Resolver Resolver
	Logger   *slog.Logger
	// Resync is the period of full reconciles without any change signal;
	// zero means DefaultResync.
	Resync time.Duration
	// LookupTimeout bounds one DNS lookup; zero means DefaultLookupTimeout.
	LookupTimeout time.Duration
	// OnReconcile, if set, is called after every reconcile pass with the
	// resulting status (e.g. to write a state file or update metrics). It
	// runs on the reconcile goroutine and must not block for long.
	OnReconcile func(Status)
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
	// RelayAfter, RelayRetry, RelayStale and RelayWatch tune relaying
	// (see AnnotationRelay); zero means DefaultRelayAfter,
	// DefaultRelayRetry, DefaultRelayStale and DefaultRelayWatch.
	RelayAfter, RelayRetry, RelayStale, RelayWatch time.Duration
	// KnownKeys maps each peer's node to the public key the previous run
	// of the agent configured it with (from its state file, beside the
	// peers restored onto the device). It carries incumbency across a
	// restart: a node that rotated its key while the agent was down keeps
	// its place against a conflicting node, whatever the restart timing.
	// Optional.
	KnownKeys map[string]wgtypes.Key
}

// Validate checks the config without doing any I/O.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if c.PublicKey == (wgtypes.Key{}) {
		errs = append(errs, errors.New("public key is empty"))
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("listen port %d is not in 1-65535", c.ListenPort))
	}
	if c.EndpointOverride != "" {
		if _, err := ParseEndpoint(c.EndpointOverride); err != nil {
			errs = append(errs, fmt.Errorf("endpoint override: %w", err))
		}
	}
	if c.DefaultKeepalive < 0 || c.DefaultKeepalive > MaxKeepalive || c.DefaultKeepalive%time.Second != 0 {
		errs = append(errs, fmt.Errorf("default keepalive %s is not whole seconds in 0s-65535s", c.DefaultKeepalive))
	}
	if c.MTU < 0 {
		errs = append(errs, fmt.Errorf("mtu %d is negative", c.MTU))
	}
	if c.Source == nil {
		errs = append(errs, errors.New("node source is nil"))
	}
	if c.Device == nil {
		errs = append(errs, errors.New("device is nil"))
	}
	if c.Dataplane == nil {
		errs = append(errs, errors.New("dataplane is nil"))
	}
	if c.Resync < 0 {
		errs = append(errs, fmt.Errorf("resync %s is negative", c.Resync))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Status is a snapshot of the reconciler's view, for the CLI and metrics.
type Status struct {
	// LastReconcile is when the last pass finished; zero before the first.
	LastReconcile time.Time
	// Duration is how long the last pass took (for the metrics histogram).
	Duration time.Duration
	// Incremental reports whether the last pass took the incremental path
	// (changed peers only, against the device snapshot; see
	// Reconciler.Run) rather than the full one.
	Incremental bool
	// Err is the last pass's error, nil if it succeeded.
	Err error
	// Synced reports whether the node source had synced in the last pass
	// (peer garbage collection is enabled only then).
	Synced bool
	// SelfFound reports whether this node's own Node object was listed.
	SelfFound bool
	// PublicKey is this node's current public key (it changes on key
	// rotation).
	PublicKey wgtypes.Key
	// LocalPodCIDRs are this node's pod prefixes.
	LocalPodCIDRs []netip.Prefix
	// Peers are the desired peers, sorted by node name.
	Peers []Peer
	// Excluded nodes with reasons, sorted by node name.
	Excluded []Exclusion
	// Degraded peers (kept, but with a problem), sorted by node name.
	Degraded []Exclusion
	// Routes sent to the dataplane.
	Routes []netip.Prefix
	// RefusedPeers are the Peer objects (external peers) refused, with
	// reasons, sorted by name; the valid ones are among Peers (named
	// ExternalPeerNode).
	RefusedPeers []Exclusion
	// Reconciles counts passes; DeviceWrites counts ConfigureDevice calls;
	// Errors counts failed passes.
	Reconciles, DeviceWrites, Errors uint64
}

// Reconciler keeps the WireGuard device, the dataplane and this node's own
// annotations in line with the Node list. It is level-triggered: every pass
// starts from the full list, so a missed or duplicated event is harmless.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex // serialises passes and guards the fields below
	// The concerns of a pass, each with the state it keeps between passes.
	dev      *countingDevice   // Config.Device, counting writes for Status.DeviceWrites
	own      *ownObject        // our own Node: publishing, rotation
	resolver *endpointResolver // endpoint names and their cache
	// peerWarn holds the (reason, message) last reported per peer node, so
	// events are emitted once per change and not on every resync.
	peerWarn onceWarner
	// knownKeys maps each configured peer's node to its key; see
	// Input.KnownKeys.
	knownKeys map[string]wgtypes.Key
	// lastApplied is the endpoint we last wrote per peer; see DiffOptions.
	lastApplied map[wgtypes.Key]netip.AddrPort
	// parser caches node parses between passes; last is what the previous
	// pass computed, for the incremental path.
	parser nodeParser
	last   lastPass
	// incrementalPass is set by a pass that took the incremental path.
	incrementalPass bool
	// ext is the external peers of the last pass (see external).
	ext externalState
	// relays is the relay state (see relayer).
	relays relayer
	// passStart is when the running pass started (the relay clock).
	passStart time.Time
	// mtu is the WireGuard interface's MTU now: Config.MTU until
	// DetectMTU reports another.
	mtu int
	// mtuWarn holds the last MTU detection error, so a failure that lasts
	// is logged once, not at every check (Run's goroutine only).
	mtuWarn onceWarner
	status  Status

	statusMu   sync.Mutex
	statusCopy Status
}

// New returns a Reconciler. It does no I/O; call Run or Reconcile.
func New(cfg Config) *Reconciler {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dev := &countingDevice{dev: cfg.Device}
	return &Reconciler{
		cfg:         cfg,
		log:         log,
		dev:         dev,
		own:         newOwnObject(cfg, dev, log),
		resolver:    newEndpointResolver(cfg.Resolver, cfg.LookupTimeout, log),
		knownKeys:   knownKeys(cfg.KnownKeys),
		relays:      relayer{after: cfg.RelayAfter, retry: cfg.RelayRetry, stale: cfg.RelayStale},
		lastApplied: map[wgtypes.Key]netip.AddrPort{},
		mtu:         cfg.MTU,
	}
}

// DefaultMTUCheck is how often Run asks Config.DetectMTU: a lowered
// underlay MTU stalls full-size flows until the tunnel follows, and
// reading the links is cheap.
const DefaultMTUCheck = 5 * time.Second

// mtuChanged asks Config.DetectMTU and reports whether the MTU differs
// from the one the passes apply, recording the new one.
func (r *Reconciler) mtuChanged() bool {
	mtu, err := r.cfg.DetectMTU()
	if err != nil {
		if r.mtuWarn.Fresh("detect", err.Error()) {
			r.log.Warn("could not detect the underlay mtu; keeping the current one", "err", err)
		}
		return false
	}
	if r.mtuWarn.Note("detect", "") {
		r.log.Info("underlay mtu detected again", "mtu", mtu)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if mtu <= 0 || mtu == r.mtu {
		return false
	}
	r.log.Info("underlay mtu changed; applying", "mtu", mtu, "was", r.mtu)
	r.mtu = mtu
	return true
}

func knownKeys(seed map[string]wgtypes.Key) map[string]wgtypes.Key {
	if seed == nil {
		return map[string]wgtypes.Key{}
	}
	return maps.Clone(seed)
}

// PublicKey returns this node's current public key: Config.PublicKey until
// a key rotation replaced it.
func (r *Reconciler) PublicKey() wgtypes.Key {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	if r.statusCopy.PublicKey != (wgtypes.Key{}) {
		return r.statusCopy.PublicKey
	}
	return r.cfg.PublicKey
}

// Status returns a snapshot of the last reconcile pass.
func (r *Reconciler) Status() Status {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	return cloneStatus(r.statusCopy)
}

// Run waits for the node source to sync, then reconciles on every change
// signal and every resync period until ctx is cancelled. Every pass starts
// from the full Node list; a change-signal pass takes the incremental path
// when only peers' endpoints or keepalives changed (see incremental), while
// the first pass, the periodic resync and retries are full passes that
// read the device afresh and re-apply the dataplane. A failed pass is
// logged and retried with backoff (capped at the resync period); Run
// returns nil on cancellation and an error only for an invalid config.
func (r *Reconciler) Run(ctx context.Context) error {
	if err := r.cfg.Validate(); err != nil {
		return err
	}
	resync := cmp.Or(r.cfg.Resync, DefaultResync)
	if !r.waitSynced(ctx) {
		return nil
	}
	r.log.Info("node cache synced, reconciling", "node", r.cfg.NodeName, "resync", resync)

	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	// A relay decision falls due at a time of its own (see relayer).
	relayDue := time.NewTimer(time.Hour)
	relayDue.Stop()
	defer relayDue.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	// While relaying is on, the device is read between passes: a relayed
	// pair's handshake or a stale direct path asks for a pass at once.
	watch := time.NewTicker(cmp.Or(r.cfg.RelayWatch, DefaultRelayWatch))
	defer watch.Stop()
	var mtuCheck <-chan time.Time
	if r.cfg.DetectMTU != nil {
		t := time.NewTicker(cmp.Or(r.cfg.MTUCheck, DefaultMTUCheck))
		defer t.Stop()
		mtuCheck = t.C
	}
	backoff := time.Second
	full := true // the first pass, resyncs and retries read everything
	for {
		if err := r.reconcileOnce(ctx, full); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Error("reconcile failed; will retry", "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(backoff*2, resync)
		} else {
			retry.Stop()
			backoff = time.Second
		}
		relayDue.Stop()
		if next := r.relayNext(); !next.IsZero() {
			relayDue.Reset(max(next.Sub(r.now()), 100*time.Millisecond))
		}
	wait:
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Source.Changed():
			full = false
		case <-ticker.C:
			full = true
		case <-retry.C:
			full = true
		case <-relayDue.C:
			full = true
		case <-watch.C:
			if !r.relayWatchDue() {
				goto wait
			}
			full = true
		case <-mtuCheck:
			if !r.mtuChanged() {
				goto wait
			}
			full = true
		}
	}
}

// relayWatchDue reads the device and reports whether a relay decision
// changed since the last pass (see due); false while relaying is off.
func (r *Reconciler) relayWatchDue() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.relays.watching() {
		return false
	}
	// The device itself, not the pass's snapshot wrapper: a read here
	// must not change what the next pass believes it last wrote.
	dev, err := r.cfg.Device.Device()
	if err != nil {
		return false // the next pass reports it
	}
	return due(r.now(), handshakesOf(dev), r.relays.paths)
}

// relayNext is when the next relay decision falls due (zero: none).
func (r *Reconciler) relayNext() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.relays.next
}

// waitSynced blocks until the source reports synced; false if ctx ended.
func (r *Reconciler) waitSynced(ctx context.Context) bool {
	const poll = 100 * time.Millisecond
	start := time.Now()
	nextLog := start.Add(10 * time.Second)
	for !r.cfg.Source.HasSynced() {
		select {
		case <-ctx.Done():
			return false
		case <-r.cfg.Source.Changed():
		case <-time.After(poll):
		}
		if now := time.Now(); now.After(nextLog) {
			r.log.Warn("still waiting for the node cache to sync", "waited", now.Sub(start).Round(time.Second))
			nextLog = now.Add(30 * time.Second)
		}
	}
	return true
}

// Reconcile runs one full pass. Errors from the device, dataplane or
// publishing are returned; the state they did not affect is still applied.
func (r *Reconciler) Reconcile(ctx context.Context) error { return r.reconcileOnce(ctx, true) }

// reconcileOnce runs a pass: a full one, or one on a change signal, which
// still starts from the full Node list but may take the incremental path
// (see incremental).
func (r *Reconciler) reconcileOnce(ctx context.Context, full bool) error {
	if err := r.cfg.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	start := r.now()
	r.passStart = start
	err := r.reconcile(ctx, full)
	r.status.Incremental = r.incrementalPass
	r.status.Reconciles++
	r.status.DeviceWrites = r.dev.writes
	r.status.Err = err
	if err != nil {
		r.status.Errors++
	}
	r.status.LastReconcile = r.now()
	r.status.Duration = r.status.LastReconcile.Sub(start)
	st := cloneStatus(r.status)
	r.mu.Unlock()

	r.statusMu.Lock()
	r.statusCopy = st
	r.statusMu.Unlock()
	if r.cfg.OnReconcile != nil {
		r.cfg.OnReconcile(cloneStatus(st))
	}
	return err
}

func (r *Reconciler) now() time.Time {
	if r.cfg.Now != nil {
		return r.cfg.Now()
	}
	return time.Now()
}

func cloneStatus(s Status) Status {
	s.LocalPodCIDRs = slices.Clone(s.LocalPodCIDRs)
	s.Peers = slices.Clone(s.Peers)
	// One backing array for every peer's prefixes: a slice per peer was
	// thousands of allocations per pass at scale.
	n := 0
	for _, p := range s.Peers {
		n += len(p.AllowedIPs)
	}
	all := make([]netip.Prefix, 0, n)
	for i := range s.Peers {
		if s.Peers[i].AllowedIPs == nil {
			continue
		}
		start := len(all)
		all = append(all, s.Peers[i].AllowedIPs...)
		s.Peers[i].AllowedIPs = all[start:len(all):len(all)]
	}
	s.Excluded = slices.Clone(s.Excluded)
	s.Degraded = slices.Clone(s.Degraded)
	s.Routes = slices.Clone(s.Routes)
	s.RefusedPeers = slices.Clone(s.RefusedPeers)
	return s
}
