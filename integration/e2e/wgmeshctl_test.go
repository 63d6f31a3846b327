package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/show"
)

// ctlWindow is the --handshake-timeout the test uses. With a 5s keepalive
// WireGuard re-handshakes about every 2 minutes, so anything much shorter
// would flag live peers; 150s is the shortest safe window.
const ctlWindow = 150 * time.Second

// ctlBin is the wgmeshctl binary TestWgmeshctl built.
var ctlBin string

// buildWgmeshctl builds cmd/wgmeshctl into the test's temp dir (under
// /tmp, which the nodes' mount namespaces share with the host).
func buildWgmeshctl(t *testing.T) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "wgmeshctl")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/wgmeshctl")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build wgmeshctl: %v\n%s", err, out)
	}
	return path
}

// ctlResult is one wgmeshctl run inside a node.
type ctlResult struct {
	code           int
	stdout, stderr string
}

func (r ctlResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs wgmeshctl with args in the node's network and mount namespaces.
func ctl(t *testing.T, ctx context.Context, l *lab.Lab, node string, args ...string) ctlResult {
	t.Helper()
	argv, err := l.NodeCommand(node, append([]string{ctlBin}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r := ctlResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", argv, err)
	}
	return r
}

func checkOn(t *testing.T, ctx context.Context, l *lab.Lab, node string) ctlResult {
	return ctl(t, ctx, l, node, "check", "--handshake-timeout", ctlWindow.String())
}

// waitCheck polls `wgmeshctl check` on node until its exit code is want
// (and, for a failure, its output matches match), returning the last run.
func waitCheck(t *testing.T, ctx context.Context, l *lab.Lab, node string, want int, match *regexp.Regexp, timeout time.Duration) ctlResult {
	t.Helper()
	var last ctlResult
	took, ok := lab.WaitFor(ctx, timeout, time.Second, func() bool {
		last = checkOn(t, ctx, l, node)
		return last.code == want && (match == nil || match.MatchString(last.stdout))
	})
	if !ok {
		t.Fatalf("check on %s did not reach exit %d (matching %v) within %s; last run: %s", node, want, match, timeout, last)
	}
	t.Logf("check on %s: exit %d after %s:\n%s", node, want, took.Round(time.Second), strings.TrimSpace(last.stdout))
	return last
}

// TestWgmeshctl is issue 5's lab proof: wgmeshctl show agrees with the
// stock `wg show` and names the right nodes, check goes 1 → 0 as a node
// converges and 0 → 1 when a peer's agent is dead long enough, and every
// node's metrics have one series per peer.
func TestWgmeshctl(t *testing.T) {
	ctlBin = buildWgmeshctl(t)
	l := newLab(t, 3, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	nodes := l.State().NodeNames()
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}

	// Keepalives make "traffic expected" true for every peer, so a dead
	// peer shows as no-handshake (without them an idle peer cannot be told
	// from a dead one).
	for _, n := range nodes {
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"5"}}}`, mesh.AnnotationKeepalive)
		if _, err := admin.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	keyOf := map[string]string{} // node -> public key, from the API
	_, ok := lab.WaitFor(ctx, time.Minute, time.Second, func() bool {
		list, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, n := range list.Items {
			if k := n.Annotations[mesh.AnnotationPublicKey]; k != "" {
				keyOf[n.Name] = k
			}
		}
		return len(keyOf) == len(nodes)
	})
	if !ok {
		t.Fatalf("not every node published a key: %v", keyOf)
	}
	for _, n := range nodes {
		waitCheck(t, ctx, l, n, 0, nil, time.Minute)
	}

	t.Run("ShowMatchesWgShow", func(t *testing.T) {
		for _, n := range nodes {
			wg, err := wgPeers(ctx, l, n)
			if err != nil {
				t.Fatal(err)
			}
			res := ctl(t, ctx, l, n, "show", "-o", "json", "--handshake-timeout", ctlWindow.String())
			if res.code != 0 {
				t.Fatalf("%s: show -o json: %s", n, res)
			}
			var r show.Report
			if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
				t.Fatalf("%s: show -o json is not the documented JSON: %v\n%s", n, err, res.stdout)
			}
			type row struct{ Endpoint, AllowedIPs, Node string }
			fromWg := map[string]row{}
			for _, p := range wg {
				ips := slices.Clone(p.AllowedIPs)
				slices.Sort(ips)
				fromWg[p.PublicKey] = row{Endpoint: p.Endpoint, AllowedIPs: strings.Join(ips, ",")}
			}
			fromCtl := map[string]row{}
			for _, p := range r.Peers {
				ips := slices.Clone(p.AllowedIPs)
				slices.Sort(ips)
				fromCtl[p.PublicKey] = row{Endpoint: p.Endpoint, AllowedIPs: strings.Join(ips, ",")}
				if p.Node != "" && keyOf[p.Node] != p.PublicKey {
					t.Errorf("%s: wgmeshctl names peer %s %q, but that node publishes key %s", n, p.PublicKey, p.Node, keyOf[p.Node])
				}
				if p.Health != show.OK {
					t.Errorf("%s: peer %s (%s) health %s: %v", n, p.Node, p.PublicKey, p.Health, p.Problems)
				}
			}
			if d := cmp.Diff(fromWg, fromCtl); d != "" {
				t.Errorf("%s: peers (-wg show +wgmeshctl show):\n%s", n, d)
			}
			var wantNames, gotNames []string
			for _, m := range nodes {
				if m != n {
					wantNames = append(wantNames, m)
				}
			}
			for _, p := range r.Peers {
				gotNames = append(gotNames, p.Node)
			}
			if d := cmp.Diff(wantNames, gotNames); d != "" {
				t.Errorf("%s: peer node names (-want +got):\n%s", n, d)
			}
			if r.Node != n || r.Source != show.SourceStateFile || !r.Healthy {
				t.Errorf("%s: report node=%q source=%q healthy=%v", n, r.Node, r.Source, r.Healthy)
			}

			// The text layout names every peer's node.
			text := ctl(t, ctx, l, n, "show")
			if n == nodes[0] {
				out, _ := l.Exec(ctx, n, "wg", "show", "wgmesh0")
				t.Logf("on %s, wg show:\n%s\nwgmeshctl show:\n%s", n, out, text.stdout)
			}
			for _, m := range wantNames {
				if !strings.Contains(text.stdout, "\n  node: "+m+"\n  health: ok\n") {
					t.Errorf("%s: `wgmeshctl show` lacks peer node %s with health ok:\n%s", n, m, text.stdout)
				}
			}
		}
		// With the API as the source the same names and health result.
		n := nodes[0]
		res := ctl(t, ctx, l, n, "show", "-o", "json", "--kubeconfig", l.AdminKubeconfig())
		var r show.Report
		if err := json.Unmarshal([]byte(res.stdout), &r); err != nil || res.code != 0 {
			t.Fatalf("show --kubeconfig: %v\n%s", err, res)
		}
		if r.Source != show.SourceAPI || !r.Healthy || len(r.Peers) != len(nodes)-1 {
			t.Errorf("show --kubeconfig: source %q healthy %v peers %d:\n%s", r.Source, r.Healthy, len(r.Peers), res.stdout)
		}
	})

	t.Run("MetricsOnePerPeer", func(t *testing.T) {
		for _, n := range nodes {
			body := scrape(t, ctx, l, n)
			for _, metric := range []string{"wgmesh_peer_latest_handshake_timestamp_seconds", "wgmesh_peer_receive_bytes_total", "wgmesh_peer_transmit_bytes_total"} {
				re := regexp.MustCompile(`(?m)^` + metric + `\{node="([^"]*)",public_key="([^"]*)"\} (\S+)$`)
				var got []string
				for _, m := range re.FindAllStringSubmatch(body, -1) {
					got = append(got, m[1])
					if keyOf[m[1]] != m[2] {
						t.Errorf("%s: %s labels node %s with key %s, want %s", n, metric, m[1], m[2], keyOf[m[1]])
					}
				}
				slices.Sort(got)
				var want []string
				for _, m := range nodes {
					if m != n {
						want = append(want, m)
					}
				}
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("%s: %s series by node (-want +got):\n%s", n, metric, d)
				}
			}
			if n == nodes[0] {
				var peerLines []string
				for _, line := range strings.Split(body, "\n") {
					if strings.HasPrefix(line, "wgmesh_peer_") {
						peerLines = append(peerLines, line)
					}
				}
				t.Logf("per-peer series scraped on %s:\n%s", n, strings.Join(peerLines, "\n"))
			}
			for _, line := range []string{fmt.Sprintf("wgmesh_peers_desired %d", len(nodes)-1), fmt.Sprintf("wgmesh_peers_configured %d", len(nodes)-1), "wgmesh_device_up 1"} {
				if !strings.Contains(body, "\n"+line+"\n") {
					t.Errorf("%s: metrics lack %q", n, line)
				}
			}
		}
	})

	t.Run("CheckFollowsAgentDeathAndRecovery", func(t *testing.T) {
		observer, victim := nodes[0], nodes[len(nodes)-1]
		if err := l.KillAgent(victim); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// On the victim itself the device is gone: exit 1 at once.
		if r := checkOn(t, ctx, l, victim); r.code != 1 || !strings.Contains(r.stderr, "no such WireGuard interface") {
			t.Errorf("check on %s with its agent dead: %s", victim, r)
		}
		// The observer flags the victim once the window has passed.
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(victim) + ` \S+: no-handshake: `)
		waitCheck(t, ctx, l, observer, 1, re, ctlWindow+2*time.Minute+30*time.Second)
		// The last handshake before the kill was at most ~2 minutes old
		// (keepalives force a re-handshake every 2 minutes), so the window
		// cannot have passed much sooner than this.
		if since := time.Since(killed); since < ctlWindow-130*time.Second {
			t.Errorf("no-handshake only %s after the kill: the %s window cannot have passed", since, ctlWindow)
		}

		// Restarted, the victim converges: 1 → 0 on it and on the observer.
		if err := l.StartAgent(victim); err != nil {
			t.Fatal(err)
		}
		if r := checkOn(t, ctx, l, victim); r.code != 1 {
			t.Logf("check on %s right after the restart already passed: %s", victim, r)
		}
		waitCheck(t, ctx, l, victim, 0, nil, 2*time.Minute)
		waitCheck(t, ctx, l, observer, 0, nil, 2*time.Minute)
	})
}

// scrape fetches the agent's /metrics inside the node (bash's /dev/tcp, so
// no HTTP client is needed on the machine).
func scrape(t *testing.T, ctx context.Context, l *lab.Lab, node string) string {
	t.Helper()
	script := `exec 3<>/dev/tcp/127.0.0.1/9585 && printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 && cat <&3`
	out, err := l.Exec(ctx, node, "bash", "-c", script)
	if err != nil {
		t.Fatalf("scrape %s: %v", node, err)
	}
	s := strings.ReplaceAll(string(out), "\r\n", "\n")
	if !strings.HasPrefix(s, "HTTP/1.0 200") && !strings.HasPrefix(s, "HTTP/1.1 200") {
		t.Fatalf("scrape %s: %.300s", node, s)
	}
	return s
}
