package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// NodeConf is what the agent knows about this node's pod network.
type NodeConf struct {
	// Bridge defaults to DefaultBridge.
	Bridge string
	// MTU is the pods' MTU: the WireGuard interface's MTU.
	MTU int
	// PodCIDRs is the Node's spec.podCIDRs.
	PodCIDRs []netip.Prefix
	// DataDir defaults to DefaultDataDir.
	DataDir string
	// PortMap chains the standard portmap plugin after ours, for hostPort
	// support. Only set it when the portmap binary is installed in the CNI
	// bin dir: a runtime fails every ADD of a conflist naming a missing
	// plugin.
	PortMap bool
}

// cniVersions is the conflist's "cniVersions" (spec 1.1): libcni 1.2 and
// later run the network at the highest entry they implement, 1.1.0 with
// STATUS and GC, while older ones ignore the key and read CNIVersion. The
// plugin answers each request in the version it was sent.
var cniVersions = []string{CNIVersion, "1.1.0"}

// RenderConflist returns the conflist for c. The agent owns the file
// outright: it always contains exactly our plugin and, if asked, portmap, so
// rewriting it is level-triggered and hand edits are overwritten. The bytes
// are deterministic, so unchanged input gives an unchanged file. It refuses
// a NodeConf the plugin itself would reject (e.g. no podCIDRs yet): a
// conflist is the runtime's signal that the network is ready.
func RenderConflist(c NodeConf) ([]byte, error) {
	cidrs := make([]string, len(c.PodCIDRs))
	for i, p := range c.PodCIDRs {
		cidrs[i] = p.String()
	}
	bridge, dataDir := c.Bridge, c.DataDir
	if bridge == "" {
		bridge = DefaultBridge
	}
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	type plugin struct {
		Type         string          `json:"type"`
		Bridge       string          `json:"bridge,omitempty"`
		MTU          int             `json:"mtu,omitempty"`
		PodCIDRs     []string        `json:"podCIDRs,omitempty"`
		DataDir      string          `json:"dataDir,omitempty"`
		Capabilities map[string]bool `json:"capabilities,omitempty"`
		SNAT         *bool           `json:"snat,omitempty"`
	}
	ours := plugin{Type: PluginType, Bridge: bridge, MTU: c.MTU, PodCIDRs: cidrs, DataDir: dataDir}
	plugins := []plugin{ours}
	if c.PortMap {
		snat := true // hostPort reachable from the node itself and from pods
		plugins = append(plugins, plugin{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: &snat})
	}
	list := struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string   `json:"name"`
		Plugins     []plugin `json:"plugins"`
	}{CNIVersion, cniVersions, NetworkName, plugins}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	// Check it the way the runtime will hand it to us.
	single, err := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		plugin
	}{CNIVersion, NetworkName, ours})
	if err != nil {
		return nil, err
	}
	if _, err := ParseConf(single); err != nil {
		return nil, fmt.Errorf("cni: refusing to write conflist: %w", err)
	}
	return append(out, '\n'), nil
}

// WriteConflist writes dir/ConflistName for c if its content differs from
// what is there, atomically (temp file in dir, fsync, rename, fsync dir) so
// a runtime never reads half a file. changed reports whether it wrote.
func WriteConflist(dir string, c NodeConf) (changed bool, err error) {
	want, err := RenderConflist(c)
	if err != nil {
		return false, err
	}
	path := filepath.Join(dir, ConflistName)
	have, err := os.ReadFile(path)
	if err == nil && bytes.Equal(have, want) {
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("cni: read conflist: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("cni: create conf dir: %w", err)
	}
	// The ".tmp" suffix keeps runtimes, which load only *.conf, *.conflist
	// and *.json, from picking the temp file up.
	f, err := os.CreateTemp(dir, "."+ConflistName+".*.tmp")
	if err != nil {
		return false, fmt.Errorf("cni: write conflist: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after a successful rename
	_, werr := f.Write(want)
	if werr == nil {
		werr = f.Chmod(0o644)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return false, fmt.Errorf("cni: write conflist: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return false, fmt.Errorf("cni: write conflist: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable; best effort
		d.Close()
	}
	return true, nil
}

// RemoveConflist deletes dir/ConflistName; a missing file is not an error.
// An agent that shuts its network down for good calls it so the runtime
// stops scheduling pods onto a dead network.
func RemoveConflist(dir string) error {
	err := os.Remove(filepath.Join(dir, ConflistName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cni: remove conflist: %w", err)
	}
	return nil
}
