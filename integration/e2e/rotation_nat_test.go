package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/integration/internal/secretscan"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// rnMaxOutage bounds how long a key rotation may cut a pod path. The
// figure itself is logged; the bound catches a peer that never switches or
// a handshake waiting for WireGuard's 5 s retry.
const rnMaxOutage = 2 * time.Second

// TestKeyRotationAndNAT is the lab proof of issue 7's items 3 and 4 on a
// real kube-apiserver: a node behind a masquerading NAT (203.0.113.2
// inside) whose Node carries wgmesh.io/persistent-keepalive reaches and is
// reached by the others, which learn its NAT address from its keepalives
// and keep it across reconciles; then `wgmeshctl rotate-key`, run by an
// operator (admin kubeconfig, from outside the nodes) and on a node itself
// (the agent's credentials, node name from the agent's state file), rotates
// a public and the NAT'd node's key while pods ping across, and the outage
// per direction is measured.
func TestKeyRotationAndNAT(t *testing.T) {
	ctl := buildWgmeshctl(t)
	l := newLab(t, 2, 1)
	ctx := context.Background()
	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}

	// node3 behind NAT, annotated for keepalive before any pod traffic.
	n3, err := l.AddNode(ctx, lab.NodeOptions{NAT: true, NoWait: true})
	if err != nil {
		t.Fatal(err)
	}
	rnAnnotate(t, c, n3.Name, map[string]string{mesh.AnnotationKeepalive: "2"})
	if err := l.WaitAgentReady(ctx, n3.Name, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddPod(ctx, n3.Name); err != nil {
		t.Fatal(err)
	}
	natIP := n3.NAT.PublicIP
	key3 := rnPublishedKey(t, c, n3.Name)
	if ep := rnNode(t, c, n3.Name).Annotations[mesh.AnnotationEndpoint]; !strings.HasPrefix(ep, "203.0.113.2:") {
		t.Fatalf("node3 publishes %q, want its inside address", ep)
	}

	roamed := map[string]string{}
	for _, n := range []string{"node1", "node2"} {
		took, ok := lab.WaitFor(ctx, 30*time.Second, 200*time.Millisecond, func() bool {
			p := rnPeer(t, l, n, key3)
			roamed[n] = p.Endpoint
			return strings.HasPrefix(p.Endpoint, natIP+":") && p.Handshake > 0
		})
		if !ok {
			t.Fatalf("%s never learned node3's NAT address (peer endpoint %q)", n, roamed[n])
		}
		t.Logf("%s reaches node3 at %s (published 203.0.113.2:51820) %s after it joined, before any pod traffic", n, roamed[n], took.Round(time.Millisecond))
	}
	requireMatrix(t, ctx, l)

	// Reconciles on every agent (any Node update triggers one) keep the
	// roamed endpoint.
	for i := range 3 {
		rnAnnotate(t, c, "node1", map[string]string{"e2e.wgmesh.io/poke": strconv.Itoa(i)})
		time.Sleep(time.Second)
	}
	for _, n := range []string{"node1", "node2"} {
		if p := rnPeer(t, l, n, key3); p.Endpoint != roamed[n] {
			t.Errorf("%s: reconciles moved node3's peer from %s to %s", n, roamed[n], p.Endpoint)
		}
		if lines := rnEndpointWrites(t, l, n, key3); len(lines) > 0 {
			t.Errorf("%s wrote node3's endpoint after roaming:\n%s", n, strings.Join(lines, "\n"))
		}
	}

	pods := podsByNode(l)
	p1, p2, p3 := pods["node1"][0], pods["node2"][0], pods[n3.Name][0]
	var oldKeys []wgtypes.Key
	for _, tc := range []struct {
		name, node string
		how        string // "operator" or "on-node"
		flows      [][2]lab.PodRef
	}{
		{"public node by operator, flows from it", "node1", "operator", [][2]lab.PodRef{{p1, p2}, {p1, p3}}},
		{"public node on the node, flows to it", "node1", "on-node", [][2]lab.PodRef{{p2, p1}, {p3, p1}}},
		{"NAT'd node on the node, flows from it", n3.Name, "on-node", [][2]lab.PodRef{{p3, p1}, {p3, p2}}},
		{"NAT'd node by operator, flows to it", n3.Name, "operator", [][2]lab.PodRef{{p1, p3}, {p2, p3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldKeys = append(oldKeys, rnRotate(t, ctx, l, c, ctl, tc.node, tc.how, tc.flows))
		})
	}

	// No private key, current or rotated away, in any agent log.
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	keys := oldKeys
	for name, n := range l.State().Nodes {
		k, err := wgdev.LoadKey(filepath.Join(n.NodePath("/var/lib/wgmesh"), "private.key"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		keys = append(keys, k)
	}
	for name := range l.State().Nodes {
		raw, err := os.ReadFile(l.AgentLog(name))
		if err != nil {
			t.Fatal(err)
		}
		if i, _ := secretscan.Find(string(raw), keys); i >= 0 {
			t.Errorf("agent log of %s contains private key #%d", name, i)
		}
	}
	t.Logf("%d private keys (current and rotated away) absent from %d agent logs", len(keys), len(l.State().Nodes))
}

// rnRotate rotates node's key with wgmeshctl while the flows ping, and
// returns the node's old private key.
func rnRotate(t *testing.T, ctx context.Context, l *lab.Lab, c kubernetes.Interface, ctl, node, how string, flows [][2]lab.PodRef) wgtypes.Key {
	t.Helper()
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	n := l.State().Nodes[node]
	keyDir := n.NodePath("/var/lib/wgmesh")
	oldPriv, err := wgdev.LoadKey(filepath.Join(keyDir, "private.key"))
	if err != nil {
		t.Fatal(err)
	}
	oldPub := oldPriv.PublicKey().String()
	before := map[string]wgPeer{}
	for other := range l.State().Nodes {
		if other != node {
			before[other] = rnPeer(t, l, other, oldPub)
		}
	}

	const interval = 10 * time.Millisecond
	var pings []*rnPinger
	for _, f := range flows {
		pings = append(pings, rnStartPing(t, l, f[0], f[1], interval))
	}
	time.Sleep(time.Second)

	var argv []string
	switch how {
	case "operator":
		ul, _ := l.Underlay()
		argv = []string{"ip", "netns", "exec", ul, ctl, "rotate-key", "--kubeconfig", l.AdminKubeconfig(), "--node-name", node, "--wait", "30s"}
	case "on-node":
		// The node's own credentials; the node name comes from the
		// agent's state file in the node's /run/wgmesh.
		argv, err = l.NodeCommand(node, ctl, "rotate-key", "--kubeconfig", filepath.Join(n.Dir, "kubeconfig"), "--run-dir", "/run/wgmesh", "--wait", "30s")
		if err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("wgmeshctl rotate-key (%s): %v\n%s", how, err, out)
	}
	answered := time.Since(t0)
	t.Logf("wgmeshctl rotate-key (%s): %s", how, strings.TrimSpace(string(out)))
	newPub := rnPublishedKey(t, c, node)
	if newPub == oldPub || !strings.Contains(string(out), newPub) {
		t.Fatalf("published key %s after rotation (old %s)", newPub, oldPub)
	}
	for other, was := range before {
		took, ok := lab.WaitFor(ctx, 10*time.Second, 20*time.Millisecond, func() bool {
			gone := rnPeer(t, l, other, oldPub).PublicKey == ""
			p := rnPeer(t, l, other, newPub)
			return gone && p.PublicKey != "" && strings.Join(p.AllowedIPs, ",") == strings.Join(was.AllowedIPs, ",") &&
				(p.Endpoint == was.Endpoint || p.Endpoint == "(none)" && was.Endpoint == "(none)")
		})
		if !ok {
			t.Errorf("%s did not swap %s's peer to the new key with the old endpoint %s and allowed IPs %v: old %+v new %+v",
				other, node, was.Endpoint, was.AllowedIPs, rnPeer(t, l, other, oldPub), rnPeer(t, l, other, newPub))
		} else {
			t.Logf("%s swapped the peer %s after the command returned", other, took.Round(time.Millisecond))
		}
	}
	swapped := time.Since(t0)
	time.Sleep(3 * time.Second)
	t1 := time.Now()

	var report []string
	for _, p := range pings {
		gap, last := p.stop(t, t0.Add(-500*time.Millisecond), t1)
		report = append(report, fmt.Sprintf("%s->%s %dms", p.from, p.to, gap.Milliseconds()))
		if last.Before(t0.Add(swapped)) {
			t.Errorf("%s->%s: no reply after the rotation", p.from, p.to)
		}
		if gap > rnMaxOutage {
			t.Errorf("%s->%s down for %s, want at most %s", p.from, p.to, gap.Round(time.Millisecond), rnMaxOutage)
		}
	}
	t.Logf("rotation of %s (%s): answered in %s, swapped everywhere after %s; outage (longest gap between replies of 10 ms pod pings): %s",
		node, how, answered.Round(time.Millisecond), swapped.Round(time.Millisecond), strings.Join(report, ", "))

	// On the node: the device and the key file hold the new key (0600),
	// the old one is in no file of the key directory.
	if out, err := l.Exec(ctx, node, "wg", "show", "wgmesh0", "public-key"); err != nil || strings.TrimSpace(string(out)) != newPub {
		t.Errorf("device public key %q (%v), want %s", strings.TrimSpace(string(out)), err, newPub)
	}
	st, err := os.Stat(filepath.Join(keyDir, "private.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v", err, st.Mode())
	}
	entries, _ := os.ReadDir(keyDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary key file %s left behind", e.Name())
		}
		raw, _ := os.ReadFile(filepath.Join(keyDir, e.Name()))
		if strings.Contains(string(raw), oldPriv.String()) {
			t.Errorf("%s still holds the old private key", e.Name())
		}
	}
	return oldPriv
}

func rnNode(t *testing.T, c kubernetes.Interface, name string) *v1.Node {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func rnPublishedKey(t *testing.T, c kubernetes.Interface, name string) string {
	t.Helper()
	k := rnNode(t, c, name).Annotations[mesh.AnnotationPublicKey]
	if k == "" {
		t.Fatalf("%s publishes no key", name)
	}
	return k
}

func rnAnnotate(t *testing.T, c kubernetes.Interface, node string, ann map[string]string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := c.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// rnPeer returns node's device peer with the given key (zero if none).
func rnPeer(t *testing.T, l *lab.Lab, node, key string) wgPeer {
	t.Helper()
	peers, err := wgPeers(context.Background(), l, node)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey == key {
			return p
		}
	}
	return wgPeer{}
}

// rnEndpointWrites returns the agent's log lines that wrote an endpoint
// for the peer with key.
func rnEndpointWrites(t *testing.T, l *lab.Lab, node, key string) []string {
	t.Helper()
	raw, err := os.ReadFile(l.AgentLog(node))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "updated peer") && strings.Contains(line, key) && !strings.Contains(line, "endpoint=<nil>") {
			out = append(out, line)
		}
	}
	return out
}

type rnPinger struct {
	from, to string
	c        *lineCmd
	interval time.Duration
}

func rnStartPing(t *testing.T, l *lab.Lab, from, to lab.PodRef, interval time.Duration) *rnPinger {
	t.Helper()
	argv, err := l.PodCommand(from.Node, from.Pod, "ping", "-D", "-n", "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", to.IP)
	if err != nil {
		t.Fatal(err)
	}
	return &rnPinger{from: from.Node, to: to.Node, c: startLineCmd(t, argv, "PING"), interval: interval}
}

// stop ends the ping and returns the longest time without a reply in
// [from, to] (less one interval) and the last reply's time.
func (p *rnPinger) stop(t *testing.T, from, to time.Time) (time.Duration, time.Time) {
	t.Helper()
	if p.c.cmd.Process != nil {
		p.c.cmd.Process.Signal(os.Interrupt)
	}
	g := pingout.Parse(p.c.wait(5*time.Second)).Gap(from, to, p.interval)
	return g.Max, g.Last
}
