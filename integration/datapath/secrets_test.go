package datapath

import (
	"slices"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/integration/internal/secretscan"
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
		if i, form := secretscan.Find(c.text, tp.keys); i >= 0 {
			t.Errorf("private key #%d appears in %s (as %.8q...)", i, c.what, form)
		}
	}
	t.Logf("secrets: %d private keys (current and rotated away) absent from %d lines of agent logs and annotations", len(tp.keys), lines)
}
