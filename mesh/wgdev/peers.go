package wgdev

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrInitialPeer rejects an initial peer that asks for more than adding a
// peer: initial peers go to a device that has none yet.
var ErrInitialPeer = errors.New("wgdev: initial peers may only add peers (no remove, update-only or preshared key)")

// uapiPeers renders peers in the UAPI "set" syntax wireguard-go reads. Only
// what wgmesh configures is supported: key, endpoint, keepalive and
// allowed IPs.
func uapiPeers(peers []wgtypes.PeerConfig) (string, error) {
	var b strings.Builder
	for _, p := range peers {
		if p.Remove || p.UpdateOnly || p.PresharedKey != nil {
			return "", fmt.Errorf("peer %s: %w", p.PublicKey, ErrInitialPeer)
		}
		if p.PublicKey == (wgtypes.Key{}) {
			return "", fmt.Errorf("initial peer with a zero public key: %w", ErrInitialPeer)
		}
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		if p.Endpoint != nil {
			// UDPAddr.String brackets IPv6 as the protocol wants.
			fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint.String())
		}
		if p.PersistentKeepaliveInterval != nil {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepaliveInterval.Seconds()))
		}
		if p.ReplaceAllowedIPs {
			b.WriteString("replace_allowed_ips=true\n")
		}
		for _, ip := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", ip.String())
		}
	}
	return b.String(), nil
}
