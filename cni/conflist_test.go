package cni

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/go-cmp/cmp"
)

func TestRenderConflist(t *testing.T) {
	got, err := RenderConflist(NodeConf{MTU: 1420, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "1.0.0",
  "cniVersions": [
    "1.0.0",
    "1.1.0"
  ],
  "name": "wgmesh",
  "plugins": [
    {
      "type": "wgmesh",
      "bridge": "wgmesh-br0",
      "mtu": 1420,
      "podCIDRs": [
        "10.244.1.0/24"
      ],
      "dataDir": "/var/lib/cni/wgmesh"
    }
  ]
}
`
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestConflistLoadsInLibcni reads the file the way runtimes do and checks
// each plugin config it would hand to our binary parses.
func TestConflistLoadsInLibcni(t *testing.T) {
	dir := t.TempDir()
	nc := NodeConf{Bridge: "br-test", MTU: 1380, DataDir: "/tmp/wgm", PortMap: true,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")}}
	if _, err := WriteConflist(dir, nc); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.LoadNetworkConf(dir, NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	// This libcni (1.3) implements spec 1.1.0, the highest of cniVersions.
	if list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != PluginType || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("loaded %+v", list)
	}
	if !list.Plugins[1].Network.Capabilities["portMappings"] {
		t.Error("portmap lacks the portMappings capability")
	}
	// libcni injects name and cniVersion into each plugin's bytes.
	inj, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConf(inj.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "br-test" || c.MTU != 1380 || c.DataDir != "/tmp/wgm" || len(c.PodCIDRs) != 2 {
		t.Errorf("parsed %+v", c)
	}
}

// TestConflistVersions pins the declared versions: cniVersion 1.0.0 for a
// libcni that predates cniVersions (1.1.x, as in containerd 1.7, fails every
// ADD of a 1.1.0 network: it cannot parse a 1.1.0 result), cniVersions up
// to 1.1.0 so newer libcni get STATUS and GC. The integration suite
// integration/cniclients drives the file through each real libcni.
func TestConflistVersions(t *testing.T) {
	b, err := RenderConflist(NodeConf{MTU: 1420, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["cniVersion"] != "1.0.0" {
		t.Errorf("cniVersion %v, want 1.0.0", raw["cniVersion"])
	}
	if diff := cmp.Diff([]any{"1.0.0", "1.1.0"}, raw["cniVersions"]); diff != "" {
		t.Errorf("cniVersions (-want +got):\n%s", diff)
	}

	// A libcni without cniVersions support sees only cniVersion.
	delete(raw, "cniVersions")
	old, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		conf []byte
		want string
	}{
		"with cniVersions":    {b, "1.1.0"},
		"without cniVersions": {old, "1.0.0"},
	} {
		list, err := libcni.ConfListFromBytes(tc.conf)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if list.CNIVersion != tc.want {
			t.Errorf("%s: libcni runs the network at %s, want %s", name, list.CNIVersion, tc.want)
		}
		// Every version a runtime may pick is one the plugin's VERSION
		// (cmd/wgmesh-cni: version.All) reports and its config parser takes.
		if !slices.Contains(version.All.SupportedVersions(), list.CNIVersion) {
			t.Errorf("%s: %s is not in version.All %v", name, list.CNIVersion, version.All.SupportedVersions())
		}
		inj, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseConf(inj.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.CNIVersion != tc.want {
			t.Errorf("%s: plugin sees cniVersion %q, want %s", name, c.CNIVersion, tc.want)
		}
	}
}

func TestWriteConflistOnlyOnChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d") // created on demand
	nc := NodeConf{MTU: 1420, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	path := filepath.Join(dir, ConflistName)

	changed, err := WriteConflist(dir, nc)
	if err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v", changed, err)
	}
	st1, _ := os.Stat(path)
	if st1.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st1.Mode())
	}
	changed, err = WriteConflist(dir, nc)
	if err != nil || changed {
		t.Fatalf("same content: changed=%v err=%v", changed, err)
	}
	st2, _ := os.Stat(path)
	if !os.SameFile(st1, st2) {
		t.Error("unchanged content was rewritten (new inode)")
	}
	nc.MTU = 1380
	if changed, err = WriteConflist(dir, nc); err != nil || !changed {
		t.Fatalf("new MTU: changed=%v err=%v", changed, err)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"mtu": 1380`) {
		t.Errorf("file not updated:\n%s", b)
	}
	// A hand edit is put back.
	if err := os.WriteFile(path, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err = WriteConflist(dir, nc); err != nil || !changed {
		t.Fatalf("after hand edit: changed=%v err=%v", changed, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	var parsed map[string]any
	b, _ = os.ReadFile(path)
	if err := json.Unmarshal(b, &parsed); err != nil {
		t.Errorf("not JSON: %v", err)
	}

	if err := RemoveConflist(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveConflist(dir); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("still there: %v", err)
	}
}

func TestWriteConflistRefusesBadConf(t *testing.T) {
	dir := t.TempDir()
	for name, nc := range map[string]NodeConf{
		"no podCIDRs":  {MTU: 1420},
		"host bits":    {MTU: 1420, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.5/24")}},
		"bad bridge":   {Bridge: "this-name-is-too-long", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		"relative dir": {DataDir: "data", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		"tiny MTU":     {MTU: 10, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
	} {
		if changed, err := WriteConflist(dir, nc); err == nil || changed {
			t.Errorf("%s: changed=%v err=%v", name, changed, err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written: %v", entries)
	}
}
