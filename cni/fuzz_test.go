package cni

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
)

// FuzzParseConf feeds arbitrary bytes to the config parser. Whatever comes
// in, the parser must not panic, must answer with a CNI error of code 6 or 7
// or with a config that honours every documented invariant, and a config it
// accepts must survive a trip through the conflist writer unchanged.
// The seed corpus is in testdata/fuzz/FuzzParseConf.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte(goodConf))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConf(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || (e.Code != types.ErrDecodingFailure && e.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("error %v (%T) is not a CNI error with code 6 or 7", err, err)
			}
			if e.Msg == "" {
				t.Fatal("error without message")
			}
			// Lenient parsing never accepts what strict parsing rejects as undecodable.
			if e.Code == types.ErrDecodingFailure {
				if _, lerr := parseConf(data, false); lerr == nil {
					t.Fatal("lenient parse accepted undecodable input")
				}
			}
			return
		}
		if c.Name == "" || validateIfName(c.Bridge) != nil || c.MTU < 68 || c.MTU > 65535 ||
			!filepath.IsAbs(c.DataDir) || filepath.Clean(c.DataDir) != c.DataDir || len(c.PodCIDRs) == 0 {
			t.Fatalf("accepted config breaks an invariant: %+v", c)
		}
		for _, p := range c.PodCIDRs {
			if p.Masked() != p || (p.Addr().Is6() && c.MTU < 1280) {
				t.Fatalf("accepted bad podCIDR %s (mtu %d)", p, c.MTU)
			}
		}
		if len(c.Gateways()) != len(c.PodCIDRs) {
			t.Fatal("gateways do not match podCIDRs")
		}
		// Lenient parsing accepts everything strict parsing accepts.
		if _, err := parseConf(data, false); err != nil {
			t.Fatalf("lenient parse rejected an accepted config: %v", err)
		}

		out, err := RenderConflist(NodeConf{Bridge: c.Bridge, MTU: c.MTU, PodCIDRs: c.PodCIDRs, DataDir: c.DataDir})
		if err != nil {
			t.Fatalf("conflist writer rejected an accepted config: %v", err)
		}
		var list struct {
			CNIVersion string            `json:"cniVersion"`
			Name       string            `json:"name"`
			Plugins    []json.RawMessage `json:"plugins"`
		}
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatal(err)
		}
		var plugin map[string]any
		json.Unmarshal(list.Plugins[0], &plugin)
		plugin["name"], plugin["cniVersion"] = c.Name, c.CNIVersion
		again, _ := json.Marshal(plugin)
		c2, err := ParseConf(again)
		if err != nil {
			t.Fatalf("rendered config does not parse: %v\n%s", err, again)
		}
		c.DNS, c.PrevResult, c.ValidAttachments = types.DNS{}, nil, nil
		if diff := cmp.Diff(c, c2, netipOpts); diff != "" {
			t.Fatalf("round trip changed the config (-before +after):\n%s", diff)
		}
	})
}
