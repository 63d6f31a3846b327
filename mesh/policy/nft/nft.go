// Package nft enforces a policy.Ruleset with nftables: one table of ours,
// "inet wgmesh-policy", replaced atomically (one netlink batch) whenever the
// ruleset changes, never touching any other table.
//
// Where packets are checked: every pod packet that is routed (to and from
// the WireGuard interface, the outside world, Services) crosses the inet
// forward hook with conntrack. Pod-to-pod frames on this node's bridge are
// switched, not routed; they reach the same hook only through
// br_netfilter, which Apply switches on for our bridge alone (the
// bridge's nf_call_iptables/nf_call_ip6tables options, not the host-wide
// sysctls). On a host without br_netfilter, Apply adds a second table,
// "bridge wgmesh-policy", that drops bridged frames to and from isolated
// pods: the kernel's bridge family has no conntrack without
// nf_conntrack_bridge, so that path fails closed instead of open.
package nft

import (
	"cmp"
	"errors"
	"log/slog"

	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Defaults for Config fields left empty.
const (
	DefaultTable  = nodenet.PolicyTable
	DefaultBridge = nodenet.Bridge
)

// Config configures a Dataplane.
type Config struct {
	// Table names our tables (family inet, and bridge for the fallback).
	Table string
	// Bridge is the pod bridge.
	Bridge string
	// LeaveBridgeNetfilter keeps Apply from switching on br_netfilter for
	// the bridge: bridged traffic is then enforced in the inet table only
	// if br_netfilter already covers it (host-wide sysctls), and fails
	// closed otherwise.
	LeaveBridgeNetfilter bool
	Logger               *slog.Logger
}

// ErrUnsupported is returned off Linux.
var ErrUnsupported = errors.New("network policy enforcement needs Linux nftables")

func (c Config) withDefaults() Config {
	c.Table = cmp.Or(c.Table, DefaultTable)
	c.Bridge = cmp.Or(c.Bridge, DefaultBridge)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
