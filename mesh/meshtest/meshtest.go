// Package meshtest provides in-memory doubles of the mesh interfaces: a
// WireGuard device that applies wgtypes.Config like wireguard-go does and
// records every call, a recording dataplane, and a slice-backed node
// source. They let the reconciler be tested without root or a cluster.
package meshtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// Device is an in-memory WireGuard device.
type Device struct {
	mu      sync.Mutex
	dev     wgtypes.Device
	configs []wgtypes.Config
	// DeviceErr and ConfigureErr, when set, are returned by the
	// corresponding method (ConfigureDevice then changes nothing and
	// records nothing).
	DeviceErr, ConfigureErr error
}

var _ mesh.Device = (*Device)(nil)

// NewDevice returns an empty device with the given name.
func NewDevice(name string) *Device {
	return &Device{dev: wgtypes.Device{Name: name, Type: wgtypes.Userspace}}
}

// Device returns a deep copy of the device state.
func (d *Device) Device() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.DeviceErr != nil {
		return nil, d.DeviceErr
	}
	c := cloneDevice(d.dev)
	return &c, nil
}

// ConfigureDevice applies cfg with wireguard-go's UAPI semantics: nil
// fields are left alone, ReplacePeers clears all peers first, UpdateOnly
// ignores unknown peers, Remove deletes, ReplaceAllowedIPs clears a peer's
// allowed IPs before adding, and an allowed IP given to one peer is taken
// away from any other (WireGuard's routing table maps a prefix to one peer).
func (d *Device) ConfigureDevice(cfg wgtypes.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ConfigureErr != nil {
		return d.ConfigureErr
	}
	for _, pc := range cfg.Peers {
		for _, n := range pc.AllowedIPs {
			if _, bits := n.Mask.Size(); bits == 0 {
				return fmt.Errorf("peer %s: allowed IP %v has a non-canonical mask", pc.PublicKey, n)
			}
		}
	}
	d.configs = append(d.configs, cloneConfig(cfg))

	if cfg.PrivateKey != nil {
		d.dev.PrivateKey = *cfg.PrivateKey
		d.dev.PublicKey = cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		d.dev.ListenPort = *cfg.ListenPort
	}
	if cfg.FirewallMark != nil {
		d.dev.FirewallMark = *cfg.FirewallMark
	}
	if cfg.ReplacePeers {
		d.dev.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(d.dev.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		if pc.Remove {
			if i >= 0 {
				d.dev.Peers = slices.Delete(d.dev.Peers, i, i+1)
			}
			continue
		}
		if i < 0 {
			if pc.UpdateOnly {
				continue
			}
			d.dev.Peers = append(d.dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1})
			i = len(d.dev.Peers) - 1
		}
		p := &d.dev.Peers[i]
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			e := *pc.Endpoint
			p.Endpoint = &e
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		for _, n := range pc.AllowedIPs {
			n = canonical(n)
			for j := range d.dev.Peers {
				d.dev.Peers[j].AllowedIPs = slices.DeleteFunc(d.dev.Peers[j].AllowedIPs, func(o net.IPNet) bool {
					return o.String() == n.String()
				})
			}
			p.AllowedIPs = append(p.AllowedIPs, n)
		}
	}
	return nil
}

// Configs returns a copy of every config passed to a successful
// ConfigureDevice call, in order.
func (d *Device) Configs() []wgtypes.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]wgtypes.Config, 0, len(d.configs))
	for _, c := range d.configs {
		out = append(out, cloneConfig(c))
	}
	return out
}

// ResetConfigs forgets the recorded configs.
func (d *Device) ResetConfigs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.configs = nil
}

// Roam sets a peer's endpoint as WireGuard does when an authenticated
// packet arrives from a new address. It is not recorded as a config.
func (d *Device) Roam(key wgtypes.Key, ep *net.UDPAddr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.dev.Peers {
		if d.dev.Peers[i].PublicKey == key {
			e := *ep
			d.dev.Peers[i].Endpoint = &e
			return nil
		}
	}
	return fmt.Errorf("roam: no peer %s", key)
}

// canonical masks the address and uses the 4-byte form for IPv4.
func canonical(n net.IPNet) net.IPNet {
	ip := n.IP
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	ones, bits := n.Mask.Size()
	if len(ip) == net.IPv4len && bits == 128 {
		ones -= 96
		bits = 32
	}
	mask := net.CIDRMask(ones, bits)
	return net.IPNet{IP: ip.Mask(mask), Mask: mask}
}

func cloneDevice(d wgtypes.Device) wgtypes.Device {
	d.Peers = slices.Clone(d.Peers)
	for i := range d.Peers {
		p := &d.Peers[i]
		if p.Endpoint != nil {
			e := *p.Endpoint
			e.IP = slices.Clone(e.IP)
			p.Endpoint = &e
		}
		p.AllowedIPs = cloneIPNets(p.AllowedIPs)
	}
	return d
}

func cloneConfig(c wgtypes.Config) wgtypes.Config {
	c.Peers = slices.Clone(c.Peers)
	for i := range c.Peers {
		p := &c.Peers[i]
		if p.Endpoint != nil {
			e := *p.Endpoint
			e.IP = slices.Clone(e.IP)
			p.Endpoint = &e
		}
		if p.PersistentKeepaliveInterval != nil {
			k := *p.PersistentKeepaliveInterval
			p.PersistentKeepaliveInterval = &k
		}
		p.AllowedIPs = cloneIPNets(p.AllowedIPs)
	}
	return c
}

func cloneIPNets(in []net.IPNet) []net.IPNet {
	if in == nil {
		return nil
	}
	out := make([]net.IPNet, len(in))
	for i, n := range in {
		out[i] = net.IPNet{IP: slices.Clone(n.IP), Mask: slices.Clone(n.Mask)}
	}
	return out
}

// Dataplane records every Apply call.
type Dataplane struct {
	mu     sync.Mutex
	states []mesh.DataplaneState
	// Err, when set, is returned by Apply (the call is still recorded).
	Err error
}

var _ mesh.Dataplane = (*Dataplane)(nil)

// Apply records s.
func (d *Dataplane) Apply(_ context.Context, s mesh.DataplaneState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s.LocalPodCIDRs = slices.Clone(s.LocalPodCIDRs)
	s.RemotePodCIDRs = slices.Clone(s.RemotePodCIDRs)
	d.states = append(d.states, s)
	return d.Err
}

// States returns every applied state, in order.
func (d *Dataplane) States() []mesh.DataplaneState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.states)
}

// Last returns the last applied state and whether there was one.
func (d *Dataplane) Last() (mesh.DataplaneState, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.states) == 0 {
		return mesh.DataplaneState{}, false
	}
	return d.states[len(d.states)-1], true
}

// Warning is one Warn call recorded by Source.
type Warning struct{ Node, Reason, Message string }

// Source is a NodeSource over an in-memory node list. Mutations signal
// Changed like an informer's event handlers would.
type Source struct {
	// Self is the node that Publish patches.
	Self string

	mu        sync.Mutex
	nodes     map[string]mesh.RawNode
	synced    bool
	changed   chan struct{}
	published []map[string]string
	warnings  []Warning
	rv        int
	// ListErr and PublishErr, when set, are returned by Nodes and Publish.
	ListErr, PublishErr error
	// HoldPublishes makes Publish record the annotations without applying
	// them, like a patch whose watch event has not reached the cache yet.
	HoldPublishes bool
}

var _ mesh.NodeSource = (*Source)(nil)

// ErrNoSuchNode is returned by Publish when the own node is not in the list.
var ErrNoSuchNode = errors.New("no such node")

// NewSource returns a synced source holding nodes; self names the node
// that Publish patches.
func NewSource(self string, nodes ...mesh.RawNode) *Source {
	s := &Source{Self: self, nodes: map[string]mesh.RawNode{}, synced: true, changed: make(chan struct{}, 1)}
	for _, n := range nodes {
		s.put(n)
	}
	return s
}

// Nodes returns the nodes sorted by name.
func (s *Source) Nodes() ([]mesh.RawNode, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ListErr != nil {
		return nil, s.ListErr
	}
	out := make([]mesh.RawNode, 0, len(s.nodes))
	for _, k := range slices.Sorted(maps.Keys(s.nodes)) {
		out = append(out, cloneRaw(s.nodes[k]))
	}
	return out, nil
}

// Changed is the level trigger.
func (s *Source) Changed() <-chan struct{} { return s.changed }

// HasSynced reports the synced flag (true unless SetSynced(false)).
func (s *Source) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// SetSynced sets the synced flag and signals.
func (s *Source) SetSynced(v bool) {
	s.mu.Lock()
	s.synced = v
	s.mu.Unlock()
	s.signal()
}

// Upsert adds or replaces a node and signals. Like the API server, it
// assigns a new ResourceVersion.
func (s *Source) Upsert(n mesh.RawNode) {
	s.mu.Lock()
	s.put(n)
	s.mu.Unlock()
	s.signal()
}

// put stores a copy of n with a fresh resource version; s.mu must be held.
func (s *Source) put(n mesh.RawNode) {
	s.rv++
	n = cloneRaw(n)
	n.ResourceVersion = strconv.Itoa(s.rv)
	s.nodes[n.Name] = n
}

// Delete removes a node and signals.
func (s *Source) Delete(name string) {
	s.mu.Lock()
	delete(s.nodes, name)
	s.mu.Unlock()
	s.signal()
}

// Publish merges annotations into the Self node, records them and signals
// (the API server would send an update event).
func (s *Source) Publish(_ context.Context, annotations map[string]string) error {
	s.mu.Lock()
	if s.PublishErr != nil {
		s.mu.Unlock()
		return s.PublishErr
	}
	n, ok := s.nodes[s.Self]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("publish to %q: %w", s.Self, ErrNoSuchNode)
	}
	s.published = append(s.published, maps.Clone(annotations))
	if s.HoldPublishes {
		s.mu.Unlock()
		return nil
	}
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	maps.Copy(n.Annotations, annotations)
	s.put(n)
	s.mu.Unlock()
	s.signal()
	return nil
}

// Published returns every annotation set passed to a successful Publish.
func (s *Source) Published() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]map[string]string, len(s.published))
	for i, m := range s.published {
		out[i] = maps.Clone(m)
	}
	return out
}

// Warn records a warning.
func (s *Source) Warn(node, reason, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.warnings = append(s.warnings, Warning{node, reason, message})
}

// Warnings returns every recorded warning, in order.
func (s *Source) Warnings() []Warning {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.warnings)
}

func (s *Source) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func cloneRaw(n mesh.RawNode) mesh.RawNode {
	n.Annotations = maps.Clone(n.Annotations)
	n.Labels = maps.Clone(n.Labels)
	n.PodCIDRs = slices.Clone(n.PodCIDRs)
	n.InternalIPs = slices.Clone(n.InternalIPs)
	return n
}
