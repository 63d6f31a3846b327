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

// Restored is what a restarting agent takes over from its previous run.
type Restored struct {
	// Peers go onto the device before the agent has read a single Node:
	// the data path then works again as soon as the device is up. The
	// reconciler corrects whatever changed meanwhile once the node list has
	// synced (peers that are gone are removed only then).
	Peers []wgtypes.PeerConfig
	// KnownKeys maps each peer's node to the key it was configured with
	// (mesh.Config.KnownKeys): with the peers on the device, it decides
	// who keeps its place in a key or pod CIDR conflict, as it did before
	// the restart.
	KnownKeys map[string]wgtypes.Key
}

// Restore reads the state file at path for a restarting agent. Errors
// wrap ErrNoState (no file: a fresh node, or a reboot emptied the run
// directory), ErrBadState or ErrOtherOwner; then nothing is restored.
func Restore(path, node, iface string) (Restored, error) {
	s, err := Read(path)
	if err != nil {
		return Restored{}, err
	}
	if s.Node != node || (s.Interface != "" && s.Interface != iface) {
		return Restored{}, fmt.Errorf("%w: %s is for node %q interface %q, not %q %q",
			ErrOtherOwner, path, s.Node, s.Interface, node, iface)
	}
	out := Restored{Peers: make([]wgtypes.PeerConfig, 0, len(s.Peers)), KnownKeys: make(map[string]wgtypes.Key, len(s.Peers))}
	for _, raw := range s.Peers {
		p, err := raw.Parse()
		if err != nil {
			// Read validated every peer already.
			return Restored{}, fmt.Errorf("%w %s: %w", ErrBadState, path, err)
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
		out.Peers = append(out.Peers, pc)
		out.KnownKeys[p.Node] = p.PublicKey
	}
	return out, nil
}
