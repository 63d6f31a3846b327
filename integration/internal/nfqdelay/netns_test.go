package nfqdelay

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
)

// TestDelaysPackets: between two namespaces, with an iptables NFQUEUE rule
// on a's output and a Delayer on that queue, every ping's round trip takes
// at least the delayer's Min, the delayer saw every request, and after the
// rule is removed and the delayer stopped, pings pass again. Root; it fails
// (never skips) without root.
func TestDelaysPackets(t *testing.T) {
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "ping", "iptables-legacy")
	p := netnstest.Prefix(t)
	a, b := netnstest.NewNS(t, p+"a"), netnstest.NewNS(t, p+"b")
	netnstest.Veth(t, a, "va", netip.MustParsePrefix("198.51.100.1/24"), b, "vb", netip.MustParsePrefix("198.51.100.2/24"))

	const lo, hi = 40 * time.Millisecond, 60 * time.Millisecond
	d := New(Config{NetNS: filepath.Join("/run/netns", a.Name), Queue: 7, Min: lo, Max: hi, Seed: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("queue not bound within 10s")
	}
	rule := []string{"OUTPUT", "-o", "va", "-p", "icmp", "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"}
	a.MustRun(t, append([]string{"iptables-legacy", "-t", "mangle", "-A"}, rule...)...)

	const n = 20
	out, err := a.Run("ping", "-n", "-c", "20", "-i", "0.05", "-W", "2", "198.51.100.2")
	o := pingout.Parse(out)
	if err != nil || o.Received != n {
		t.Fatalf("delayed ping: %v (%d of %d replies)\n%s", err, o.Received, n, out)
	}
	for _, rtt := range o.RTTs() {
		// The echo request leaves a only after its delay: no round trip
		// can be shorter (ping stamps the request before it is sent).
		if rtt < lo {
			t.Errorf("round trip %s shorter than the delay's minimum %s", rtt, lo)
		}
	}
	a.MustRun(t, append([]string{"iptables-legacy", "-t", "mangle", "-D"}, rule...)...)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its cancel")
	}
	s := d.Stats()
	if s.Packets != n || s.Errors != 0 || s.Flushed != 0 {
		t.Errorf("delayer: %d packets, %d flushed, %d errors (%s); want %d, 0, 0", s.Packets, s.Flushed, s.Errors, s.FirstError, n)
	}
	for _, dl := range s.Delays {
		if dl < lo || dl > hi {
			t.Errorf("delay %s outside [%s, %s]", dl, lo, hi)
		}
	}
	t.Logf("round trips with the delay: %v", o.RTTs())
	if out, err := a.Run("ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "198.51.100.2"); err != nil {
		t.Errorf("ping after the delay was removed: %v\n%s", err, out)
	}
}
