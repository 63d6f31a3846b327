package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
	// pub is our current public key: cfg.PublicKey until a rotation.
	pub wgtypes.Key
	// rotated is the rotation request we acted on last; it is published
	// as AnnotationKeyRotated.
	rotated string
	// ownWarn holds the problems last logged about our own Node (see the
	// own* subjects); peerWarn the (reason, message) last reported per
	// peer node, so events are emitted once per change and not on every
	// resync.
	ownWarn, peerWarn onceWarner
	// knownKeys maps each configured peer's node to its key; see
	// Input.KnownKeys.
	knownKeys map[string]wgtypes.Key
	// lastApplied is the endpoint we last wrote per peer; see DiffOptions.
	lastApplied map[wgtypes.Key]netip.AddrPort
	resolver    *endpointResolver
	// published is the last annotation patch we sent and publishedAt the
	// resourceVersion of our Node it was computed from.
	published   map[string]string
	publishedAt string
	status      Status

	statusMu   sync.Mutex
	statusCopy Status
}

// New returns a Reconciler. It does no I/O; call Run or Reconcile.
func New(cfg Config) *Reconciler {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{
		cfg:         cfg,
		log:         log,
		pub:         cfg.PublicKey,
		knownKeys:   map[string]wgtypes.Key{},
		lastApplied: map[wgtypes.Key]netip.AddrPort{},
		resolver:    newEndpointResolver(cfg.Resolver, cfg.LookupTimeout, log),
	}
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
// signal and every resync period until ctx is cancelled. A failed pass is
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
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := time.Second
	for {
		if err := r.Reconcile(ctx); err != nil {
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
		select {
		case <-ctx.Done():
			return nil
		case <-r.cfg.Source.Changed():
		case <-ticker.C:
		case <-retry.C:
		}
	}
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
func (r *Reconciler) Reconcile(ctx context.Context) error {
	if err := r.cfg.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	start := r.now()
	err := r.reconcile(ctx)
	r.status.Reconciles++
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

func (r *Reconciler) reconcile(ctx context.Context) error {
	synced := r.cfg.Source.HasSynced()
	raws, err := r.cfg.Source.Nodes()
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var errs []error

	var selfRaw *RawNode
	for i := range raws {
		if raws[i].Name == r.cfg.NodeName {
			selfRaw = &raws[i]
			break
		}
	}
	// A rotation comes first so that this very pass publishes the new key.
	if selfRaw != nil {
		if err := r.rotateIfRequested(selfRaw); err != nil {
			errs = append(errs, fmt.Errorf("rotate key: %w", err))
		}
	}
	self := Self{Name: r.cfg.NodeName, PublicKey: r.pub}
	selfIssue := ""
	if selfRaw == nil {
		selfIssue = "own Node not listed yet; configuring peers anyway, not publishing annotations"
	} else {
		if err := r.ensureOwnAnnotations(ctx, selfRaw); err != nil {
			errs = append(errs, fmt.Errorf("publish own annotations: %w", err))
		}
		cidrs, err := ParsePodCIDRs(selfRaw.PodCIDRs)
		if err != nil {
			selfIssue = fmt.Sprintf("own pod CIDRs unusable (%v); configuring peers anyway", err)
		}
		self.PodCIDRs = cidrs
		if ka, ok := selfRaw.Annotations[AnnotationKeepalive]; ok {
			d, err := ParseKeepalive(ka)
			if err != nil {
				r.warnKeepalive(fmt.Sprintf("own annotation %s ignored: %v", AnnotationKeepalive, err))
			} else {
				self.Keepalive = &d
				r.warnKeepalive("")
			}
		} else {
			r.warnKeepalive("")
		}
	}
	if r.ownWarn.Note(ownSubjectListed, selfIssue) {
		if selfIssue != "" {
			r.log.Warn(selfIssue, "node", r.cfg.NodeName)
		} else {
			r.log.Info("own Node found with pod CIDRs", "node", r.cfg.NodeName, "pod_cidrs", self.PodCIDRs)
		}
	}

	dev, err := r.cfg.Device.Device()
	if err != nil {
		// Without the device we know neither incumbents nor what to
		// change; leave the dataplane as it is rather than guess.
		errs = append(errs, fmt.Errorf("read device: %w", err))
		r.updateStatus(synced, selfRaw != nil, self, Desired{}, nil)
		return errors.Join(errs...)
	}

	d := Compute(Input{
		Self:             self,
		Nodes:            raws,
		DefaultKeepalive: r.cfg.DefaultKeepalive,
		Resolved:         r.resolver.resolve(ctx, r.peerNodes(raws)),
		Configured:       ConfiguredFrom(dev),
		KnownKeys:        r.knownKeys,
	})
	r.report(d)

	cfg := Diff(d, dev, DiffOptions{LastApplied: r.lastApplied, GC: synced, KnownKeys: r.knownKeys})
	if !IsEmpty(cfg) {
		r.status.DeviceWrites++
		if err := r.cfg.Device.ConfigureDevice(cfg); err != nil {
			errs = append(errs, fmt.Errorf("configure device: %w", err))
		} else {
			r.logChanges(d, cfg)
			r.recordApplied(d, dev, cfg)
			r.recordKeys(d)
		}
	} else {
		r.recordApplied(d, dev, cfg)
		r.recordKeys(d)
		r.log.Debug("device already converged", "peers", len(d.Peers))
	}

	routes := routesFor(d, dev, synced, self.PodCIDRs)
	if err := r.cfg.Dataplane.Apply(ctx, DataplaneState{
		LocalPodCIDRs:  slices.Clone(self.PodCIDRs),
		RemotePodCIDRs: routes,
		MTU:            r.cfg.MTU,
	}); err != nil {
		errs = append(errs, fmt.Errorf("apply dataplane: %w", err))
	}
	r.updateStatus(synced, selfRaw != nil, self, d, routes)
	return errors.Join(errs...)
}

func (r *Reconciler) updateStatus(synced, selfFound bool, self Self, d Desired, routes []netip.Prefix) {
	r.status.Synced = synced
	r.status.SelfFound = selfFound
	r.status.PublicKey = r.pub
	r.status.LocalPodCIDRs = self.PodCIDRs
	r.status.Peers = d.Peers
	r.status.Excluded = d.Excluded
	r.status.Degraded = d.Degraded
	r.status.Routes = routes
}

// ownAnnotations returns the annotations this node should carry.
func (r *Reconciler) ownAnnotations(self *RawNode) (map[string]string, error) {
	want := map[string]string{AnnotationPublicKey: r.pub.String()}
	if r.rotated != "" {
		want[AnnotationKeyRotated] = r.rotated
	}
	if r.cfg.EndpointOverride != "" {
		ep, err := ParseEndpoint(r.cfg.EndpointOverride)
		if err != nil {
			return want, fmt.Errorf("endpoint override: %w", err)
		}
		want[AnnotationEndpoint] = ep.String()
		return want, nil
	}
	for _, s := range self.InternalIPs {
		if a, err := netip.ParseAddr(s); err == nil {
			want[AnnotationEndpoint] = net.JoinHostPort(a.Unmap().String(), strconv.Itoa(r.cfg.ListenPort))
			return want, nil
		}
	}
	return want, errNoOwnEndpoint
}

var errNoOwnEndpoint = errors.New("own Node has no InternalIP and no endpoint override is set; not publishing an endpoint")

// ensureOwnAnnotations publishes our key and endpoint if the Node does not
// show them already, so an edit by someone else is reverted.
func (r *Reconciler) ensureOwnAnnotations(ctx context.Context, self *RawNode) error {
	want, err := r.ownAnnotations(self)
	issue := ""
	if err != nil {
		issue = err.Error()
	}
	// Log a missing endpoint once per change of circumstance, not per pass.
	if r.ownWarn.Fresh(ownSubjectEndpoint, issue) {
		r.log.Warn(issue, "node", r.cfg.NodeName)
	}
	if errors.Is(err, errNoOwnEndpoint) {
		err = nil
	}
	patch := map[string]string{}
	for k, v := range want {
		if self.Annotations[k] != v {
			patch[k] = v
		}
	}
	if len(patch) == 0 {
		r.publishedAt = ""
		return err
	}
	// The cache still shows the very object version we patched: our patch
	// is on its way, not overwritten. Publishing again would only add load.
	if self.ResourceVersion != "" && self.ResourceVersion == r.publishedAt && maps.Equal(patch, r.published) {
		return err
	}
	if perr := r.cfg.Source.Publish(ctx, patch); perr != nil {
		r.publishedAt = ""
		return errors.Join(err, perr)
	}
	r.publishedAt, r.published = self.ResourceVersion, patch
	r.log.Info("published own annotations", "node", r.cfg.NodeName, "annotations", patch)
	return err
}

// maxRotateRequest bounds the request value we echo into logs and the
// answer annotation.
const maxRotateRequest = 253

// rotateIfRequested replaces this node's key when its Node carries a
// rotation request (AnnotationRotateKey) not yet answered: a new private key
// is generated, stored through Config.Keys (replacing the old one, which is
// kept nowhere) and set on the device, which keeps its peers and listen
// port. The caller publishes the new public key and the answer in the same
// pass. Peers switch when they see the new key; until then this node cannot
// start sessions with them.
//
// Order matters for crash safety: the key is stored before the device uses
// it, so a restarted agent never comes up with a key other than the one in
// use or about to be published. A crash after storing and before
// publishing costs one extra rotation (the request is still unanswered).
func (r *Reconciler) rotateIfRequested(self *RawNode) error {
	req := strings.TrimSpace(self.Annotations[AnnotationRotateKey])
	if req == "" || req == strings.TrimSpace(self.Annotations[AnnotationKeyRotated]) || req == r.rotated {
		return nil
	}
	issue := ""
	switch {
	case len(req) > maxRotateRequest:
		issue = fmt.Sprintf("key rotation request ignored: annotation %s is longer than %d bytes", AnnotationRotateKey, maxRotateRequest)
	case r.cfg.Keys == nil:
		issue = "key rotation requested but this agent has no key store; ignoring"
	}
	if issue != "" {
		if r.ownWarn.Fresh(ownSubjectRotate, issue) {
			r.log.Warn(issue, "node", r.cfg.NodeName)
		}
		return nil
	}
	gen := r.cfg.GenerateKey
	if gen == nil {
		gen = wgtypes.GeneratePrivateKey
	}
	priv, err := gen()
	if err != nil {
		return fmt.Errorf("generate private key: %w", err)
	}
	if priv == (wgtypes.Key{}) {
		return errors.New("generate private key: got the zero key")
	}
	if err := r.cfg.Keys.Save(priv); err != nil {
		return fmt.Errorf("store new private key: %w", err)
	}
	r.status.DeviceWrites++
	if err := r.cfg.Device.ConfigureDevice(wgtypes.Config{PrivateKey: &priv}); err != nil {
		// The stored key is newer than the device's: the next pass
		// rotates again (the request is unanswered) and a restart
		// loads the stored one; either way the published key follows.
		return fmt.Errorf("set new private key on the device: %w", err)
	}
	old := r.pub
	r.pub = priv.PublicKey()
	r.rotated = req
	r.ownWarn.Note(ownSubjectRotate, "")
	r.spendHandshakes()
	r.log.Info("rotated private key; publishing the new public key", "node", r.cfg.NodeName,
		"old_public_key", old.String(), "public_key", r.pub.String(), "request", req)
	return nil
}

// warnKeepalive logs a problem with our own keepalive annotation once per
// change ("" clears it).
func (r *Reconciler) warnKeepalive(issue string) {
	if r.ownWarn.Fresh(ownSubjectKeepalive, issue) {
		r.log.Warn(issue, "node", r.cfg.NodeName)
		r.cfg.Source.Warn(r.cfg.NodeName, string(ReasonBadKeepalive), issue)
	}
}

// spendHandshakes makes the device send a handshake initiation with the
// new key to every peer now, before the key is published: the peers cannot
// know the key yet and drop it, and WireGuard sends the next initiation
// only after RekeyTimeout (5 s). Left to itself, the device would initiate
// whenever its next packet for a peer came, possibly just as that peer,
// having seen the new key, greets us (see Diff): two crossing initiations
// each invalidate the other's response and both sides wait for that 5 s
// retry. This way the peers' greetings are the only initiations. A
// failure here only costs time, so it is logged, not returned.
func (r *Reconciler) spendHandshakes() {
	dev, err := r.cfg.Device.Device()
	if err == nil {
		cfg := InitiateHandshakes(dev)
		if IsEmpty(cfg) {
			return
		}
		r.status.DeviceWrites++
		err = r.cfg.Device.ConfigureDevice(cfg)
	}
	if err != nil {
		r.log.Warn("could not make the device initiate handshakes with the new key; peers may need up to 5 s longer to reach this node",
			"node", r.cfg.NodeName, "err", err)
	}
}

// recordKeys remembers which key each desired peer's node has on the
// device now.
func (r *Reconciler) recordKeys(d Desired) {
	clear(r.knownKeys)
	for _, p := range d.Peers {
		r.knownKeys[p.Node] = p.PublicKey
	}
}

// peerNodes returns the other nodes that parse as peers.
func (r *Reconciler) peerNodes(raws []RawNode) []Node {
	var out []Node
	for _, raw := range raws {
		if raw.Name == r.cfg.NodeName {
			continue
		}
		if n, err := ParseNode(raw); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// report logs and raises an event for each excluded or degraded node, once
// per change of (reason, message), and forgets nodes that recovered.
func (r *Reconciler) report(d Desired) {
	seen := map[string]bool{}
	emit := func(e Exclusion, excluded bool) {
		seen[e.Node] = true
		msg := e.Err.Error()
		if !r.peerWarn.Fresh(e.Node, string(e.Reason)+"\x00"+msg) {
			return
		}
		if excluded {
			r.log.Warn("node excluded from the mesh", "peer_node", e.Node, "reason", e.Reason, "err", msg)
			r.cfg.Source.Warn(e.Node, string(e.Reason), "excluded from the wgmesh mesh: "+msg)
		} else {
			r.log.Warn("peer degraded", "peer_node", e.Node, "reason", e.Reason, "err", msg)
			r.cfg.Source.Warn(e.Node, string(e.Reason), msg)
		}
	}
	for _, e := range d.Excluded {
		emit(e, true)
	}
	for _, e := range d.Degraded {
		emit(e, false)
	}
	for _, n := range r.peerWarn.ForgetExcept(seen) {
		r.log.Info("node no longer excluded or degraded", "peer_node", n)
	}
}

func (r *Reconciler) logChanges(d Desired, cfg wgtypes.Config) {
	names := map[wgtypes.Key]string{}
	for _, p := range d.Peers {
		names[p.PublicKey] = p.Node
	}
	for _, pc := range cfg.Peers {
		switch {
		case pc.Remove:
			r.log.Info("removed peer", "key", pc.PublicKey.String())
		case pc.UpdateOnly:
			r.log.Info("updated peer", "peer_node", names[pc.PublicKey], "key", pc.PublicKey.String(),
				"endpoint", pc.Endpoint, "allowed_ips_replaced", pc.ReplaceAllowedIPs)
		default:
			r.log.Info("added peer", "peer_node", names[pc.PublicKey], "key", pc.PublicKey.String(), "endpoint", pc.Endpoint)
		}
	}
}

// recordApplied remembers, per desired peer, the endpoint that the device
// now holds because we wrote it or because it already matched the
// published one; roamed endpoints leave the memory unchanged.
func (r *Reconciler) recordApplied(d Desired, dev *wgtypes.Device, cfg wgtypes.Config) {
	written := map[wgtypes.Key]bool{}
	for _, pc := range cfg.Peers {
		if pc.Endpoint != nil && !pc.Remove {
			written[pc.PublicKey] = true
		}
	}
	devEP := map[wgtypes.Key]netip.AddrPort{}
	for _, p := range dev.Peers {
		if ap, ok := addrPortOf(p.Endpoint); ok {
			devEP[p.PublicKey] = ap
		}
	}
	want := map[wgtypes.Key]bool{}
	for _, p := range d.Peers {
		want[p.PublicKey] = true
		if !p.Endpoint.IsValid() {
			continue
		}
		if written[p.PublicKey] || devEP[p.PublicKey] == p.Endpoint {
			r.lastApplied[p.PublicKey] = p.Endpoint
		}
	}
	for k := range r.lastApplied {
		if !want[k] {
			delete(r.lastApplied, k)
		}
	}
}

// routesFor returns the remote prefixes to route through the device: the
// desired ones, plus, before the source has synced, those of device peers
// that Diff kept (so a restart does not drop routes of nodes not listed
// yet). Prefixes overlapping a desired route or a local one are left out.
func routesFor(d Desired, dev *wgtypes.Device, synced bool, local []netip.Prefix) []netip.Prefix {
	routes := slices.Clone(d.Routes)
	if !synced && dev != nil {
		want := map[wgtypes.Key]bool{}
		for _, p := range d.Peers {
			want[p.PublicKey] = true
		}
		for _, p := range dev.Peers {
			if want[p.PublicKey] {
				continue
			}
			for _, q := range prefixesFromIPNets(p.AllowedIPs) {
				if _, _, clash := firstOverlap([]netip.Prefix{q}, routes); clash {
					continue
				}
				if _, _, clash := firstOverlap([]netip.Prefix{q}, local); clash {
					continue
				}
				routes = append(routes, q)
			}
		}
	}
	sortPrefixes(routes)
	return routes
}

func cloneStatus(s Status) Status {
	s.LocalPodCIDRs = slices.Clone(s.LocalPodCIDRs)
	s.Peers = slices.Clone(s.Peers)
	for i := range s.Peers {
		s.Peers[i].AllowedIPs = slices.Clone(s.Peers[i].AllowedIPs)
	}
	s.Excluded = slices.Clone(s.Excluded)
	s.Degraded = slices.Clone(s.Degraded)
	s.Routes = slices.Clone(s.Routes)
	return s
}
