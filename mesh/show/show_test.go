package show

import (
	"bytes"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh/agentstate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// now is the fixed evaluation time of every fixture.
var now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// key returns a deterministic key: a private key derived from b, or its
// public key.
func privKey(b byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

func pubKey(b byte) wgtypes.Key { return privKey(b).PublicKey() }

func ipnet(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

func udp(s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		panic(err)
	}
	return a
}

// mixedFixture has a peer of every health.
func mixedFixture() Input {
	dev := &wgtypes.Device{
		Name: "wgmesh0", Type: wgtypes.Userspace, PrivateKey: privKey(1), PublicKey: pubKey(1), ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{ // ok: keepalive and a recent handshake
				PublicKey: pubKey(2), Endpoint: udp("198.51.100.11:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.1.0/24")},
				PersistentKeepaliveInterval: 25 * time.Second, LastHandshakeTime: now.Add(-63 * time.Second),
				ReceiveBytes: 1258291, TransmitBytes: 3565158,
			},
			{ // allowed-ips-drift: an extra prefix on the device
				PublicKey: pubKey(4), Endpoint: udp("198.51.100.13:51820"),
				AllowedIPs:                  []net.IPNet{ipnet("10.244.9.0/24"), ipnet("10.244.3.0/24")},
				PersistentKeepaliveInterval: 25 * time.Second, LastHandshakeTime: now.Add(-5 * time.Second),
				ReceiveBytes: 900, TransmitBytes: 1100,
			},
			{ // stale-endpoint and no-handshake: old endpoint, keepalive, 10 min quiet
				PublicKey: pubKey(5), Endpoint: udp("198.51.100.99:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.4.0/24")},
				PersistentKeepaliveInterval: 25 * time.Second, LastHandshakeTime: now.Add(-10 * time.Minute),
				ReceiveBytes: 5 << 30, TransmitBytes: 3 << 40,
			},
			{ // no-handshake without keepalive: sent initiations, never answered
				PublicKey: pubKey(6), Endpoint: udp("198.51.100.15:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.5.0/24")},
				TransmitBytes: 1480,
			},
			{ // ok: idle without keepalive, handshake long ago
				PublicKey: pubKey(7), Endpoint: udp("198.51.100.16:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.6.0/24")},
				LastHandshakeTime: now.Add(-(26*time.Hour + 3*time.Minute + 1*time.Second)), ReceiveBytes: 512, TransmitBytes: 2048,
			},
			{ // ok: roamed endpoint (NAT) with a recent handshake
				PublicKey: pubKey(8), Endpoint: udp("203.0.113.7:40000"), AllowedIPs: []net.IPNet{ipnet("10.244.7.0/24")},
				PersistentKeepaliveInterval: 5 * time.Second, LastHandshakeTime: now.Add(-90 * time.Second),
				ReceiveBytes: 1 << 20, TransmitBytes: 1 << 10, PresharedKey: privKey(99),
			},
			{ // unexpected: no node has this key
				PublicKey: pubKey(9), Endpoint: udp("198.51.100.200:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.200.0/24")},
			},
		},
	}
	since := now.Add(-time.Hour)
	justNow := now.Add(-10 * time.Second)
	st := &agentstate.State{
		Version: 1, Node: "node-a", Interface: "wgmesh0", PublicKey: pubKey(1).String(), ListenPort: 51820,
		LastReconcile: now.Add(-4 * time.Second), Synced: true, Reconciles: 12,
		LocalPodCIDRs: []string{"10.244.0.0/24"},
		Peers: []agentstate.Peer{
			{Node: "node-b", PublicKey: pubKey(2).String(), Endpoint: "198.51.100.11:51820", AllowedIPs: []string{"10.244.1.0/24"}, PersistentKeepaliveSeconds: 25, Since: since},
			{Node: "node-c", PublicKey: pubKey(3).String(), Endpoint: "198.51.100.12:51820", AllowedIPs: []string{"10.244.2.0/24"}, Since: justNow},
			{Node: "node-d", PublicKey: pubKey(4).String(), Endpoint: "198.51.100.13:51820", AllowedIPs: []string{"10.244.3.0/24"}, PersistentKeepaliveSeconds: 25, Since: since},
			{Node: "node-e", PublicKey: pubKey(5).String(), Endpoint: "198.51.100.14:51820", AllowedIPs: []string{"10.244.4.0/24"}, PersistentKeepaliveSeconds: 25, Since: since},
			{Node: "node-f", PublicKey: pubKey(6).String(), Endpoint: "198.51.100.15:51820", AllowedIPs: []string{"10.244.5.0/24"}, Since: now.Add(-5 * time.Minute)},
			{Node: "node-g", PublicKey: pubKey(7).String(), Endpoint: "198.51.100.16:51820", AllowedIPs: []string{"10.244.6.0/24"}, Since: since},
			{Node: "node-h", PublicKey: pubKey(8).String(), Endpoint: "198.51.100.17:51820", AllowedIPs: []string{"10.244.7.0/24"}, PersistentKeepaliveSeconds: 5, Since: since},
		},
		Excluded: []agentstate.Exclusion{
			{Node: "node-x", Reason: "no-public-key", Message: "annotation wgmesh.io/public-key is missing"},
			{Node: "node-w", Reason: "overlapping-pod-cidr", Message: `pod CIDR 10.244.1.0/24 overlaps 10.244.1.0/24 of node "node-b"`},
		},
		Degraded: []agentstate.Exclusion{{Node: "node-g", Reason: "unresolvable-endpoint", Message: `endpoint host "g.example" did not resolve; peer kept without an endpoint`}},
	}
	return Input{Device: dev, State: st, Source: SourceStateFile, Now: now}
}

// healthyFixture is a converged three-node mesh seen from node-a.
func healthyFixture() Input {
	dev := &wgtypes.Device{
		Name: "wgmesh0", Type: wgtypes.Userspace, PrivateKey: privKey(1), PublicKey: pubKey(1), ListenPort: 51820,
		Peers: []wgtypes.Peer{
			{PublicKey: pubKey(3), Endpoint: udp("198.51.100.12:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.2.0/24"), ipnet("fd00:10:244:2::/64")},
				LastHandshakeTime: now.Add(-2 * time.Second), ReceiveBytes: 92, TransmitBytes: 148},
			{PublicKey: pubKey(2), Endpoint: udp("[2001:db8::11]:51820"), AllowedIPs: []net.IPNet{ipnet("10.244.1.0/24")},
				LastHandshakeTime: now, ReceiveBytes: 1023, TransmitBytes: 1024},
		},
	}
	st := &agentstate.State{
		Version: 1, Node: "node-a", Interface: "wgmesh0", PublicKey: pubKey(1).String(), ListenPort: 51820,
		LastReconcile: now.Add(-29 * time.Second), LastError: "apply dataplane: nftables: operation not permitted", Synced: true,
		Peers: []agentstate.Peer{
			{Node: "node-b", PublicKey: pubKey(2).String(), Endpoint: "[2001:db8::11]:51820", AllowedIPs: []string{"10.244.1.0/24"}, Since: now.Add(-time.Minute)},
			{Node: "node-c", PublicKey: pubKey(3).String(), Endpoint: "198.51.100.12:51820", AllowedIPs: []string{"fd00:10:244:2::/64", "10.244.2.0/24"}, Since: now.Add(-time.Minute)},
		},
	}
	return Input{Device: dev, State: st, Source: SourceAPI, Now: now, HandshakeTimeout: 150 * time.Second}
}

// noStateFixture is a device read without any agent state.
func noStateFixture() Input {
	in := mixedFixture()
	in.State = nil
	in.Device.PrivateKey = wgtypes.Key{}
	in.Device.FirewallMark = 0x51820
	return in
}

func TestGolden(t *testing.T) {
	fixtures := map[string]Input{
		"mixed":   mixedFixture(),
		"healthy": healthyFixture(),
		"nostate": noStateFixture(),
	}
	formats := map[string]func(*bytes.Buffer, Report) error{
		"txt":  func(b *bytes.Buffer, r Report) error { return Text(b, r) },
		"json": func(b *bytes.Buffer, r Report) error { return JSON(b, r) },
		"yaml": func(b *bytes.Buffer, r Report) error { return YAML(b, r) },
		"conf": func(b *bytes.Buffer, r Report) error { return Conf(b, r, ConfOptions{}) },
		"private.conf": func(b *bytes.Buffer, r Report) error {
			return Conf(b, r, ConfOptions{ShowPrivate: true})
		},
		"dot": func(b *bytes.Buffer, r Report) error { return DOT(b, r) },
		"check": func(b *bytes.Buffer, r Report) error {
			ok, err := Check(b, r)
			b.WriteString("# healthy=" + map[bool]string{true: "true", false: "false"}[ok] + "\n")
			return err
		},
	}
	for fname, in := range fixtures {
		r := Evaluate(in)
		for ext, render := range formats {
			t.Run(fname+"."+ext, func(t *testing.T) {
				var b bytes.Buffer
				if err := render(&b, r); err != nil {
					t.Fatal(err)
				}
				golden(t, filepath.Join("testdata", fname+"."+ext), b.Bytes())
			})
		}
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, d)
	}
}

func TestHealth(t *testing.T) {
	r := Evaluate(mixedFixture())
	got := map[string][]Health{}
	for _, p := range r.Peers {
		name := p.Node
		if name == "" {
			name = "?" + p.PublicKey[:4]
		}
		var hs []Health
		for _, pr := range p.Problems {
			hs = append(hs, pr.Health)
		}
		if len(hs) == 0 {
			hs = []Health{p.Health}
		} else if hs[0] != p.Health {
			t.Errorf("%s: health %s is not its most severe problem %s", name, p.Health, hs[0])
		}
		got[name] = hs
	}
	want := map[string][]Health{
		"node-b":                     {OK},
		"node-c":                     {Missing},
		"node-d":                     {AllowedIPsDrift},
		"node-e":                     {StaleEndpoint, NoHandshake},
		"node-f":                     {NoHandshake},
		"node-g":                     {OK},
		"node-h":                     {OK},
		"?" + pubKey(9).String()[:4]: {Unexpected},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("health (-want +got):\n%s", d)
	}
	if r.Healthy {
		t.Error("mixed fixture judged healthy")
	}
	if !Evaluate(healthyFixture()).Healthy {
		t.Error("healthy fixture judged unhealthy")
	}
}

// TestHandshakeWindow walks one peer through time: ok while fresh,
// no-handshake once the window has passed, counted from when the agent
// first wanted the peer for a peer that never had a handshake.
func TestHandshakeWindow(t *testing.T) {
	const timeout = 3 * time.Minute
	since := now
	cases := []struct {
		name      string
		at        time.Duration // after since
		handshake time.Duration // after since; <0 means never
		keepalive time.Duration
		tx        int64
		endpoint  string
		want      []Health
	}{
		{"fresh, never, keepalive", time.Minute, -1, 25 * time.Second, 148, "198.51.100.2:51820", nil},
		{"window passed, never, keepalive", timeout + time.Second, -1, 25 * time.Second, 148, "198.51.100.2:51820", []Health{NoHandshake}},
		{"exactly the window", timeout, -1, 25 * time.Second, 148, "198.51.100.2:51820", nil},
		{"window passed, never, idle, nothing sent", time.Hour, -1, 0, 0, "198.51.100.2:51820", nil},
		{"window passed, never, sent without keepalive", time.Hour, -1, 0, 148, "198.51.100.2:51820", []Health{NoHandshake}},
		{"old handshake, keepalive", time.Hour, time.Minute, 25 * time.Second, 1 << 20, "198.51.100.2:51820", []Health{NoHandshake}},
		{"old handshake, idle", time.Hour, time.Minute, 0, 1 << 20, "198.51.100.2:51820", nil},
		{"recent handshake, keepalive", time.Hour, time.Hour - 2*time.Minute, 25 * time.Second, 1 << 20, "198.51.100.2:51820", nil},
		{"roamed with recent handshake", time.Hour, time.Hour - time.Minute, 0, 1, "203.0.113.9:1024", nil},
		{"roamed, quiet, idle", time.Hour, time.Minute, 0, 1, "203.0.113.9:1024", []Health{StaleEndpoint}},
		{"no device endpoint, fresh", time.Minute, -1, 0, 0, "", nil},
		{"no device endpoint, window passed", time.Hour, -1, 0, 0, "", []Health{StaleEndpoint}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := wgtypes.Peer{PublicKey: pubKey(2), AllowedIPs: []net.IPNet{ipnet("10.244.1.0/24")},
				PersistentKeepaliveInterval: c.keepalive, TransmitBytes: c.tx}
			if c.endpoint != "" {
				p.Endpoint = udp(c.endpoint)
			}
			if c.handshake >= 0 {
				p.LastHandshakeTime = since.Add(c.handshake)
			}
			in := Input{
				Device: &wgtypes.Device{Name: "wgmesh0", PublicKey: pubKey(1), Peers: []wgtypes.Peer{p}},
				State: &agentstate.State{Version: 1, Node: "node-a", Peers: []agentstate.Peer{{
					Node: "node-b", PublicKey: pubKey(2).String(), Endpoint: "198.51.100.2:51820",
					AllowedIPs: []string{"10.244.1.0/24"}, Since: since,
				}}},
				Now:              since.Add(c.at),
				HandshakeTimeout: timeout,
			}
			r := Evaluate(in)
			var got []Health
			for _, pr := range r.Peers[0].Problems {
				got = append(got, pr.Health)
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Errorf("problems (-want +got):\n%s\n%+v", d, r.Peers[0].Problems)
			}
			if r.Healthy != (len(c.want) == 0) {
				t.Errorf("healthy = %v with problems %v", r.Healthy, got)
			}
		})
	}
}

func TestStateMismatchWarns(t *testing.T) {
	in := healthyFixture()
	in.State.PublicKey = pubKey(50).String()
	in.State.Interface = "wg9"
	r := Evaluate(in)
	if len(r.Warnings) != 2 {
		t.Fatalf("warnings = %q, want the key and the interface mismatch", r.Warnings)
	}
	var b bytes.Buffer
	if _, err := Check(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "warning: the agent state is for public key") {
		t.Errorf("check output lacks the warning:\n%s", b.String())
	}
}

func TestPrettyDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                "0 seconds",
		time.Second:                      "1 second",
		63 * time.Second:                 "1 minute, 3 seconds",
		time.Hour:                        "1 hour",
		2*time.Hour + 1*time.Second:      "2 hours, 1 second",
		25*time.Hour + 2*time.Minute:     "1 day, 1 hour, 2 minutes",
		366 * 24 * time.Hour:             "1 year, 1 day",
		2*365*24*time.Hour + time.Minute: "2 years, 1 minute",
		1500 * time.Millisecond:          "1 second",
	} {
		if got := PrettyDuration(d); got != want {
			t.Errorf("PrettyDuration(%v) = %q, want %q", d, got, want)
		}
	}
	if got := Ago(now, now); got != "Now" {
		t.Errorf("Ago(now) = %q", got)
	}
	if got := Ago(now.Add(-63*time.Second), now); got != "1 minute, 3 seconds ago" {
		t.Errorf("Ago(-63s) = %q", got)
	}
	if got := Ago(now.Add(time.Minute), now); !strings.Contains(got, "clock wound backward") {
		t.Errorf("Ago(future) = %q", got)
	}
}

func TestBytes(t *testing.T) {
	for b, want := range map[int64]string{
		0:         "0 B",
		1023:      "1023 B",
		1024:      "1.00 KiB",
		1536:      "1.50 KiB",
		1258291:   "1.20 MiB",
		3565158:   "3.40 MiB",
		5 << 30:   "5.00 GiB",
		3 << 40:   "3.00 TiB",
		1<<20 - 1: "1024.00 KiB",
	} {
		if got := Bytes(b); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", b, got, want)
		}
	}
	if got := Transfer(1258291, 3565158); got != "1.20 MiB received, 3.40 MiB sent" {
		t.Errorf("Transfer = %q", got)
	}
}
