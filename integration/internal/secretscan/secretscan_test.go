package secretscan

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestFindsEveryForm(t *testing.T) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := wgtypes.GeneratePrivateKey()
	var jsonLog, textLog strings.Builder
	slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("leak", "k", k)
	slog.New(slog.NewTextHandler(&textLog, nil)).Info("leak", "k", k)
	raw, _ := json.Marshal(k)
	for _, text := range append(Forms(k), jsonLog.String(), textLog.String(), string(raw), fmt.Sprintf("private_key=%x\n", k[:])) {
		if i, _ := Find("prefix "+text+" suffix", []wgtypes.Key{other, k}); i != 1 {
			t.Errorf("key not found in %q", text)
		}
	}
	if i, f := Find(other.PublicKey().String()+jsonLog.String(), []wgtypes.Key{other}); i != -1 {
		t.Errorf("found %q where only another key's public key and a different key are", f)
	}
}
