package agentstate

import (
	"errors"
	"fmt"
	"net"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrOtherOwner means the state file was written for another node or
// interface; its peers are not ours to restore.
var ErrOtherOwner = errors.New("agent state file belongs to another node or interface")

// RestorePeers reads the state file at path and returns its peers as
// WireGuard peer configurations, for a restarting agent to put on its
// device before it has read a single Node: the data path then works again
// as soon as the device is up. The reconciler corrects whatever changed
// meanwhile once the node list has synced (peers that are gone are removed
// only then). Errors wrap ErrNoState (no file: a fresh node, or a reboot
// emptied the run directory), ErrBadState or ErrOtherOwner.
func RestorePeers(path, node, iface string) ([]wgtypes.PeerConfig, error) {
	s, err := Read(path)
	if err != nil {
		return nil, err
	}
	if s.Node != node || (s.Interface != "" && s.Interface != iface) {
		return nil, fmt.Errorf("%w: %s is for node %q interface %q, not %q %q",
			ErrOtherOwner, path, s.Node, s.Interface, node, iface)
	}
	out := make([]wgtypes.PeerConfig, 0, len(s.Peers))
	for _, raw := range s.Peers {
		p, err := raw.Parse()
		if err != nil {
			// Read validated every peer already.
			return nil, fmt.Errorf("%w %s: %w", ErrBadState, path, err)
		}
		pc := wgtypes.PeerConfig{PublicKey: p.PublicKey, ReplaceAllowedIPs: true}
		if p.Endpoint.IsValid() {
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		if p.Keepalive > 0 {
			ka := p.Keepalive
			pc.PersistentKeepaliveInterval = &ka
		}
		for _, q := range p.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: q.Addr().AsSlice(), Mask: net.CIDRMask(q.Bits(), q.Addr().BitLen())})
		}
		out = append(out, pc)
	}
	return out, nil
}
