// Package cni is the wgmesh CNI plugin: it attaches pods to the node's
// bridge with a veth pair and an address from the ipam package, and it
// renders the conflist the agent installs. Linux plumbing sits behind the
// Network interface so the plugin logic is testable without root.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/wgmesh/wgmesh/ipam"
	"github.com/wgmesh/wgmesh/mesh/nodenet"
)

// Names and defaults shared with the agent.
const (
	// PluginType is the plugin's "type" and its binary's name in the CNI bin dir.
	PluginType = "wgmesh"
	// NetworkName is the conflist's "name".
	NetworkName = "wgmesh"
	// ConflistName is the file the agent writes into the CNI conf dir.
	ConflistName = "10-wgmesh.conflist"
	// CNIVersion is the conflist's "cniVersion", what a libcni older than
	// 1.2 (containerd 1.7) reads: it cannot parse a 1.1.0 result, so the
	// field stays at 1.0.0. Newer libcni read cniVersions (conflist.go).
	CNIVersion     = "1.0.0"
	DefaultBridge  = nodenet.Bridge
	DefaultDataDir = "/var/lib/cni/wgmesh"
	// DefaultMTU is WireGuard's default (1500 minus 80 bytes of overhead),
	// used when the config does not say.
	DefaultMTU = 1420
)

// NetConf is the plugin's configuration as it appears in the conflist and on
// the plugin's stdin.
type NetConf struct {
	types.PluginConf
	Bridge   string   `json:"bridge,omitempty"`
	MTU      int      `json:"mtu,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	DataDir  string   `json:"dataDir,omitempty"`
	// LegacyAttachments is the key spec 1.1.0 first named by mistake;
	// libcni sends both.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// Conf is a parsed and validated NetConf with defaults applied.
type Conf struct {
	Name       string
	CNIVersion string
	Bridge     string
	MTU        int
	PodCIDRs   []netip.Prefix
	DataDir    string
	DNS        types.DNS
	// PrevResult is the result of the plugins before this one (CHECK, and
	// ADD when something is chained in front of us); nil when absent.
	PrevResult *current.Result
	// ValidAttachments is GC's cni.dev/valid-attachments. It is nil when
	// the key is absent, which GC must not read as "nothing is valid".
	ValidAttachments []types.GCAttachment
}

// StoreDir is where this network's IPAM records live. Each network name gets
// its own directory so that GC of one network never frees another's
// addresses.
func (c *Conf) StoreDir() string { return filepath.Join(c.DataDir, c.Name) }

// Gateways returns the bridge addresses the agent gives the bridge
// (nodenet.Gateway of each podCIDR), e.g. 10.244.1.1/24.
func (c *Conf) Gateways() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.PodCIDRs))
	for _, p := range c.PodCIDRs {
		// ParseConf has checked that every podCIDR has room for one.
		if gw, err := nodenet.Gateway(p); err == nil {
			out = append(out, gw)
		}
	}
	return out
}

// errNoPodCIDRs marks a config that is fine except that the node has no
// podCIDR yet: STATUS reports it as "not ready" rather than "broken".
var errNoPodCIDRs = errors.New("podCIDRs is empty: the node has no pod CIDR assigned yet")

// ParseConf decodes and fully validates a plugin config. Errors are CNI
// errors: code 6 when the bytes are not JSON, code 7 when a field is missing
// or wrong, with a message naming the field.
func ParseConf(data []byte) (*Conf, error) {
	return parseConf(data, true)
}

// parseConf with strict false accepts missing or broken podCIDRs and mtu:
// DEL and GC only need to know where the bridge and the records are, and
// must still clean up after a config that went bad.
func parseConf(data []byte, strict bool) (*Conf, error) {
	var n NetConf
	if err := json.Unmarshal(data, &n); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return nil, confErr("the config must be a JSON object, not a JSON %s", typeErr.Value)
		}
		if errors.As(err, &typeErr) {
			return nil, confErr("field %q must be %s, not a JSON %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
		}
		return nil, types.NewError(types.ErrDecodingFailure, "invalid wgmesh config: not valid JSON: "+err.Error(), "")
	}
	c := &Conf{
		Name:             n.Name,
		CNIVersion:       n.CNIVersion,
		Bridge:           n.Bridge,
		MTU:              n.MTU,
		DataDir:          n.DataDir,
		DNS:              n.DNS,
		ValidAttachments: n.ValidAttachments,
	}
	if c.ValidAttachments == nil {
		c.ValidAttachments = n.LegacyAttachments
	}
	if c.Name == "" {
		return nil, confErr("name is missing")
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if err := validateIfName(c.Bridge); err != nil {
		return nil, confErr("bridge %q: %v", c.Bridge, err)
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) {
		return nil, confErr("dataDir %q must be an absolute path", c.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)

	if n.RawPrevResult != nil {
		prev, err := parsePrevResult(&n.PluginConf)
		if err != nil && strict {
			return nil, confErr("prevResult: %v", err)
		}
		c.PrevResult = prev
	}

	has6 := false
	for i, s := range n.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if strict {
				return nil, confErr("podCIDRs[%d] %q is not a CIDR prefix like 10.244.1.0/24", i, s)
			}
			continue
		}
		if err := ipam.ValidatePrefix(p); err != nil && strict {
			return nil, confErr("podCIDRs[%d]: %v", i, err)
		}
		has6 = has6 || p.Addr().Is6()
		c.PodCIDRs = append(c.PodCIDRs, p)
	}
	if !strict {
		return c, nil
	}
	if len(c.PodCIDRs) == 0 {
		return nil, &types.Error{Code: types.ErrInvalidNetworkConfig, Msg: "invalid wgmesh config: " + errNoPodCIDRs.Error(), Details: errNoPodCIDRs.Error()}
	}
	// Overlaps and mixed pools are ipam's rules; building one checks them
	// without any I/O.
	if _, err := ipam.New(ipam.Config{Prefixes: c.PodCIDRs, Store: ipam.NewMemStore()}); err != nil {
		return nil, confErr("podCIDRs: %v", err)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	minMTU := 68
	if has6 {
		minMTU = 1280 // IPv6 requires it
	}
	if c.MTU < minMTU || c.MTU > 65535 {
		return nil, confErr("mtu %d is out of range: it must be between %d and 65535", c.MTU, minMTU)
	}
	return c, nil
}

func parsePrevResult(pc *types.PluginConf) (*current.Result, error) {
	if err := version.ParsePrevResult(pc); err != nil {
		return nil, err
	}
	return current.NewResultFromResult(pc.PrevResult)
}

func confErr(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid wgmesh config: "+fmt.Sprintf(format, args...), "")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int", "int64", "uint", "float64":
		return "a number"
	case "string":
		return "a string"
	case "slice":
		return "a list"
	case "map", "struct":
		return "an object"
	case "bool":
		return "true or false"
	}
	return "a " + goKind
}

// isNoPodCIDRs reports whether err is ParseConf's "no podCIDRs yet" error.
func isNoPodCIDRs(err error) bool {
	var e *types.Error
	return errors.As(err, &e) && e.Details == errNoPodCIDRs.Error()
}

// validateIfName applies the kernel's rules for interface names.
func validateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > 15:
		return errors.New("interface names are at most 15 bytes")
	case name == "." || name == "..":
		return errors.New("not an interface name")
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) || r == 0 }):
		return errors.New("interface names cannot contain '/', ':' or whitespace")
	}
	return nil
}
