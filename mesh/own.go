package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ownObject is this node's side of its own Node object: it publishes our
// public key and endpoint there, acts on key rotation requests found there,
// and reads our pod prefixes and keepalive from it.
type ownObject struct {
	name             string
	keys             KeyStore // nil: rotation requests are only logged
	generateKey      func() (wgtypes.Key, error)
	listenPort       int
	endpointOverride string
	source           NodeSource
	dev              Device
	log              *slog.Logger

	// pub is our current public key: Config.PublicKey until a rotation.
	pub wgtypes.Key
	// rotated is the rotation request we acted on last; it is published
	// as AnnotationKeyRotated.
	rotated string
	// published is the last annotation patch we sent and publishedAt the
	// resourceVersion of our Node it was computed from.
	published   map[string]string
	publishedAt string
	// warn holds the problems last logged about our own Node (the
	// ownSubject* subjects).
	warn onceWarner
}

func newOwnObject(cfg Config, dev Device, log *slog.Logger) *ownObject {
	gen := cfg.GenerateKey
	if gen == nil {
		gen = wgtypes.GeneratePrivateKey
	}
	return &ownObject{
		name:             cfg.NodeName,
		keys:             cfg.Keys,
		generateKey:      gen,
		listenPort:       cfg.ListenPort,
		endpointOverride: cfg.EndpointOverride,
		source:           cfg.Source,
		dev:              dev,
		log:              log,
		pub:              cfg.PublicKey,
	}
}

// sync brings our own Node (list.Own) in line with this agent: a pending
// rotation first, so that this very pass publishes the new key, then our
// key and endpoint annotations. It returns this node as Compute needs it.
// Problems with the Node that do not stop the pass are logged once each,
// not returned.
func (o *ownObject) sync(ctx context.Context, list NodeList) (Self, error) {
	var errs []error
	own := list.Own
	if own != nil {
		if err := o.rotateIfRequested(&own.Raw); err != nil {
			errs = append(errs, fmt.Errorf("rotate key: %w", err))
		}
	}
	self := list.Self(o.pub)
	issue := ""
	if own == nil {
		issue = "own Node not listed yet; configuring peers anyway, not publishing annotations"
	} else {
		if err := o.publish(ctx, &own.Raw); err != nil {
			errs = append(errs, fmt.Errorf("publish own annotations: %w", err))
		}
		if own.PodCIDRsErr != nil {
			issue = fmt.Sprintf("own pod CIDRs unusable (%v); configuring peers anyway", own.PodCIDRsErr)
		}
		kaIssue := ""
		if own.KeepaliveErr != nil {
			kaIssue = fmt.Sprintf("own annotation %s ignored: %v", AnnotationKeepalive, own.KeepaliveErr)
		}
		o.warnKeepalive(kaIssue)
	}
	if o.warn.Note(ownSubjectListed, issue) {
		if issue != "" {
			o.log.Warn(issue, "node", o.name)
		} else {
			o.log.Info("own Node found with pod CIDRs", "node", o.name, "pod_cidrs", self.PodCIDRs)
		}
	}
	return self, errors.Join(errs...)
}

// warnKeepalive logs a problem with our own keepalive annotation, and
// raises an event for it, once per change ("" clears it).
func (o *ownObject) warnKeepalive(issue string) {
	if o.warn.Fresh(ownSubjectKeepalive, issue) {
		o.log.Warn(issue, "node", o.name)
		o.source.Warn(o.name, string(ReasonBadKeepalive), issue)
	}
}

// annotations returns the annotations our Node should carry.
func (o *ownObject) annotations(raw *RawNode) (map[string]string, error) {
	want := map[string]string{AnnotationPublicKey: o.pub.String()}
	if o.rotated != "" {
		want[AnnotationKeyRotated] = o.rotated
	}
	// Location-mates dial the InternalIP; published only while the node
	// has a location, the only time anyone reads it.
	if LocationOf(*raw) != "" {
		if ep, ok := privateEndpointFor(raw.InternalIPs, o.listenPort); ok {
			want[AnnotationPrivateEndpoint] = ep.String()
		}
	}
	if o.endpointOverride != "" {
		ep, err := ParseEndpoint(o.endpointOverride)
		if err != nil {
			return want, fmt.Errorf("endpoint override: %w", err)
		}
		want[AnnotationEndpoint] = ep.String()
		return want, nil
	}
	for _, s := range raw.InternalIPs {
		if a, err := netip.ParseAddr(s); err == nil {
			want[AnnotationEndpoint] = net.JoinHostPort(a.Unmap().String(), strconv.Itoa(o.listenPort))
			return want, nil
		}
	}
	return want, errNoOwnEndpoint
}

var errNoOwnEndpoint = errors.New("own Node has no InternalIP and no endpoint override is set; not publishing an endpoint")

// publish patches our key and endpoint onto our Node if it does not show
// them already, so an edit by someone else is reverted.
func (o *ownObject) publish(ctx context.Context, raw *RawNode) error {
	want, err := o.annotations(raw)
	issue := ""
	if err != nil {
		issue = err.Error()
	}
	// Log a missing endpoint once per change of circumstance, not per pass.
	if o.warn.Fresh(ownSubjectEndpoint, issue) {
		o.log.Warn(issue, "node", o.name)
	}
	if errors.Is(err, errNoOwnEndpoint) {
		err = nil
	}
	patch := map[string]string{}
	for k, v := range want {
		if raw.Annotations[k] != v {
			patch[k] = v
		}
	}
	if len(patch) == 0 {
		o.publishedAt = ""
		return err
	}
	// The cache still shows the very object version we patched: our patch
	// is on its way, not overwritten. Publishing again would only add load.
	if raw.ResourceVersion != "" && raw.ResourceVersion == o.publishedAt && maps.Equal(patch, o.published) {
		return err
	}
	if perr := o.source.Publish(ctx, patch); perr != nil {
		o.publishedAt = ""
		return errors.Join(err, perr)
	}
	o.publishedAt, o.published = raw.ResourceVersion, patch
	o.log.Info("published own annotations", "node", o.name, "annotations", patch)
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
func (o *ownObject) rotateIfRequested(raw *RawNode) error {
	req := strings.TrimSpace(raw.Annotations[AnnotationRotateKey])
	if req == "" || req == strings.TrimSpace(raw.Annotations[AnnotationKeyRotated]) || req == o.rotated {
		return nil
	}
	issue := ""
	switch {
	case len(req) > maxRotateRequest:
		issue = fmt.Sprintf("key rotation request ignored: annotation %s is longer than %d bytes", AnnotationRotateKey, maxRotateRequest)
	case o.keys == nil:
		issue = "key rotation requested but this agent has no key store; ignoring"
	}
	if issue != "" {
		if o.warn.Fresh(ownSubjectRotate, issue) {
			o.log.Warn(issue, "node", o.name)
		}
		return nil
	}
	priv, err := o.generateKey()
	if err != nil {
		return fmt.Errorf("generate private key: %w", err)
	}
	if priv == (wgtypes.Key{}) {
		return errors.New("generate private key: got the zero key")
	}
	if err := o.keys.Save(priv); err != nil {
		return fmt.Errorf("store new private key: %w", err)
	}
	if err := o.dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv}); err != nil {
		// The stored key is newer than the device's: the next pass
		// rotates again (the request is unanswered) and a restart
		// loads the stored one; either way the published key follows.
		return fmt.Errorf("set new private key on the device: %w", err)
	}
	old := o.pub
	o.pub = priv.PublicKey()
	o.rotated = req
	o.warn.Note(ownSubjectRotate, "")
	o.spendHandshakes()
	o.log.Info("rotated private key; publishing the new public key", "node", o.name,
		"old_public_key", old.String(), "public_key", o.pub.String(), "request", req)
	return nil
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
func (o *ownObject) spendHandshakes() {
	dev, err := o.dev.Device()
	if err == nil {
		cfg := InitiateHandshakes(dev)
		if IsEmpty(cfg) {
			return
		}
		err = o.dev.ConfigureDevice(cfg)
	}
	if err != nil {
		o.log.Warn("could not make the device initiate handshakes with the new key; peers may need up to 5 s longer to reach this node",
			"node", o.name, "err", err)
	}
}
