package show

import (
	"bytes"
	"strings"
	"testing"
)

// TestRelayedPeer: a peer the agent relays (its pod CIDR on the relay's
// peer, none on its own) is healthy, and the text and JSON say through
// whom.
func TestRelayedPeer(t *testing.T) {
	in := healthyFixture()
	in.Device.Peers[0].AllowedIPs = nil // node-c, relayed
	in.Device.Peers[1].AllowedIPs = append(in.Device.Peers[1].AllowedIPs, ipnet("10.244.2.0/24"), ipnet("fd00:10:244:2::/64"))
	in.State.Peers[0].AllowedIPs = []string{"10.244.1.0/24", "10.244.2.0/24", "fd00:10:244:2::/64"}
	in.State.Peers[1].AllowedIPs = nil
	in.State.Peers[1].RelayedVia = "node-b"
	r := Evaluate(in)
	for _, p := range r.Peers {
		if p.Health != OK {
			t.Errorf("%s: health %s %v", p.Node, p.Health, p.Problems)
		}
		if want := map[string]string{"node-c": "node-b"}[p.Node]; p.RelayedVia != want {
			t.Errorf("%s: relayedVia %q, want %q", p.Node, p.RelayedVia, want)
		}
	}
	var text, js bytes.Buffer
	if err := Text(&text, r); err != nil {
		t.Fatal(err)
	}
	if err := JSON(&js, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "\n  relayed: node-c via node-b\n") || !strings.Contains(text.String(), "relayed via: node-b") || !strings.Contains(js.String(), `"relayedVia": "node-b"`) {
		t.Errorf("relay not shown:\n%s\n%s", text.String(), js.String())
	}
}
