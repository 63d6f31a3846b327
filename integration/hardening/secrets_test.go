package hardening

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// rememberKeys records every node's current private key, so that a later
// scan also looks for keys rotated away since.
func (tp *topo) rememberKeys() {
	tp.t.Helper()
	for _, n := range tp.nodes {
		k, err := wgdev.LoadKey(n.keyFile)
		if err != nil {
			tp.t.Fatal(err)
		}
		if !slices.Contains(tp.keys, k) {
			tp.keys = append(tp.keys, k)
		}
	}
}

// keyForms are the encodings a private key could leak in, including the
// JSON array a [32]byte becomes in a JSON log line.
func keyForms(k wgtypes.Key) []string {
	arr, _ := json.Marshal([32]byte(k))
	return []string{
		string(arr),
		k.String(),
		base64.RawStdEncoding.EncodeToString(k[:]),
		base64.URLEncoding.EncodeToString(k[:]),
		hex.EncodeToString(k[:]), // the UAPI's form
		strings.ToUpper(hex.EncodeToString(k[:])),
	}
}

// assertNoPrivateKeys fails if any private key a node has had appears in
// any agent's output (JSON logs at debug level, wireguard-go's included)
// or in any annotation.
func assertNoPrivateKeys(t *testing.T, tp *topo) {
	t.Helper()
	tp.rememberKeys()
	var corpus []struct{ what, text string }
	for _, n := range tp.nodes {
		corpus = append(corpus, struct{ what, text string }{n.name + " agent output", n.agent.Output()})
		var ann strings.Builder
		for k, v := range tp.annotations(n.name) {
			ann.WriteString(k + "=" + v + "\n")
		}
		corpus = append(corpus, struct{ what, text string }{n.name + " annotations", ann.String()})
	}
	lines := 0
	for _, c := range corpus {
		lines += strings.Count(c.text, "\n")
		for _, k := range tp.keys {
			for _, form := range keyForms(k) {
				if strings.Contains(c.text, form) {
					t.Errorf("a private key appears in %s (as %q...)", c.what, form[:8])
				}
			}
		}
	}
	t.Logf("secrets: %d private keys (current and rotated away) absent from %d lines of agent logs and annotations", len(tp.keys), lines)
}
