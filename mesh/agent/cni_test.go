package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/cni"
	"github.com/wgmesh/wgmesh/mesh"
)

func TestCNIWriterFollowsPodCIDRsAndMTU(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	cfg := Config{CNIConfDir: dir, CNIBridge: "br-test", CNIDataDir: "/var/lib/cni/test"}
	w := cniWriter(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	path := filepath.Join(dir, cni.ConflistName)

	// No podCIDR yet: no conflist, so the runtime keeps the node NotReady.
	if err := w.Apply(ctx, mesh.DataplaneState{MTU: 1420}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("conflist written without a podCIDR (stat: %v)", err)
	}

	read := func() (mtu float64, cidrs []any, bridge, dataDir string, mod time.Time) {
		t.Helper()
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(raw, &list); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		p := list.Plugins[0]
		return p["mtu"].(float64), p["podCIDRs"].([]any), p["bridge"].(string), p["dataDir"].(string), st.ModTime()
	}

	st := mesh.DataplaneState{LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, MTU: 1420}
	if err := w.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	mtu, cidrs, bridge, dataDir, _ := read()
	if mtu != 1420 || len(cidrs) != 1 || cidrs[0] != "10.244.1.0/24" || bridge != "br-test" || dataDir != "/var/lib/cni/test" {
		t.Fatalf("conflist mtu=%v cidrs=%v bridge=%q dataDir=%q", mtu, cidrs, bridge, dataDir)
	}

	st.MTU = 1380
	if err := w.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if mtu, _, _, _, _ := read(); mtu != 1380 {
		t.Errorf("conflist mtu = %v after MTU change, want 1380", mtu)
	}
}
