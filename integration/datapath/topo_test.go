package datapath

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/filesource"
	"github.com/wgmesh/wgmesh/integration/internal/netnstest"
	"github.com/wgmesh/wgmesh/integration/internal/pingout"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// The topology's agents resync every second and poll the node files every
// 50 ms, so that roaming and re-resolution show within seconds.
const (
	resync = time.Second
	poll   = 50 * time.Millisecond
)

// topoSpec describes one node of a topology.
type topoSpec struct {
	name string
	// nat puts the node behind its own router namespace that masquerades
	// 203.0.113.0/24 onto the underlay.
	nat bool
	// annotations are the operator's (e.g. persistent-keepalive).
	annotations map[string]string
	// hosts is the node's /etc/hosts content (empty: the host's).
	hosts string
}

// hnode is a running node.
type hnode struct {
	topoSpec
	idx     int
	ns      *netnstest.NS
	router  *netnstest.NS // NAT router, nil for a public node
	own     netip.Addr    // the node's own underlay address (its InternalIP)
	seenAs  netip.Addr    // the address its packets come from on the underlay
	podCIDR netip.Prefix
	// wgAddr is the pod gateway (podCIDR's first address, on the agent's
	// pod bridge): what pings across the mesh go to and come from.
	wgAddr  netip.Addr
	keyFile string
	hosts   string // path of its hosts file, if any
	agent   *netnstest.Proc
}

type topo struct {
	t      *testing.T
	prefix string
	dir    string
	spec   string
	annDir string
	self   string
	ul     *netnstest.NS
	nodes  []*hnode
	// keys are private keys the nodes have had (see rememberKeys).
	keys []wgtypes.Key
}

// newTopo builds the underlay (a bridge on 198.51.100.0/24 in its own
// namespace), the nodes (public ones at 198.51.100.(10+i); NAT'd ones at
// 203.0.113.2 behind a router at 198.51.100.(10+i)) and starts their agents.
func newTopo(t *testing.T, specs ...topoSpec) *topo {
	t.Helper()
	netnstest.RequireRoot(t)
	netnstest.RequireTools(t, "ip", "wg", "ping", "nft", "nsenter", "sysctl")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tp := &topo{t: t, prefix: netnstest.Prefix(t), dir: t.TempDir(), self: self}
	tp.spec = filepath.Join(tp.dir, "nodes.json")
	tp.annDir = filepath.Join(tp.dir, "annotations")
	if err := os.MkdirAll(tp.annDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tp.ul = newUnderlay(t, tp.prefix)

	var raws []mesh.RawNode
	for i, s := range specs {
		idx := i + 1
		n := &hnode{
			topoSpec: s,
			idx:      idx,
			seenAs:   netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", 10+idx)),
			podCIDR:  netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", idx)),
			wgAddr:   netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", idx)),
			keyFile:  filepath.Join(tp.dir, s.name, "private.key"),
		}
		n.own = n.seenAs
		n.ns = netnstest.NewNS(t, fmt.Sprintf("%s-n%d", tp.prefix, idx))
		if s.nat {
			n.own = netip.MustParseAddr("203.0.113.2")
			n.router = netnstest.NewNS(t, fmt.Sprintf("%s-r%d", tp.prefix, idx))
			netnstest.Veth(t, tp.ul, fmt.Sprintf("v%d", idx), netip.Prefix{}, n.router, "eth0", netip.PrefixFrom(n.seenAs, 24))
			n.router.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
			netnstest.Veth(t, n.router, "in0", netip.MustParsePrefix("203.0.113.1/24"), n.ns, "eth0", netip.PrefixFrom(n.own, 24))
			n.ns.MustRun(t, "ip", "route", "add", "default", "via", "203.0.113.1")
			n.router.MustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
			rules := "table ip hardening-nat {\n chain post { type nat hook postrouting priority srcnat; oifname \"eth0\" masquerade; }\n}\n"
			cmd := n.router.Command(t.Context(), "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("nat rules: %v: %s", err, out)
			}
		} else {
			netnstest.Veth(t, tp.ul, fmt.Sprintf("v%d", idx), netip.Prefix{}, n.ns, "eth0", netip.PrefixFrom(n.own, 24))
			n.ns.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
		}
		tp.ul.MustRun(t, "ip", "link", "set", fmt.Sprintf("v%d", idx), "master", "br0")
		if s.hosts != "" {
			n.hosts = filepath.Join(tp.dir, s.name+".hosts")
			if err := os.WriteFile(n.hosts, []byte(s.hosts), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		raws = append(raws, mesh.RawNode{
			Name:        s.name,
			Annotations: s.annotations,
			PodCIDRs:    []string{n.podCIDR.String()},
			InternalIPs: []string{n.own.String()},
			Created:     time.Date(2026, 1, 1, 0, 0, idx, 0, time.UTC),
		})
		tp.nodes = append(tp.nodes, n)
	}
	raw, err := json.Marshal(raws)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tp.spec, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range tp.nodes {
		tp.start(n)
	}
	return tp
}

func (tp *topo) start(n *hnode) {
	t := tp.t
	t.Helper()
	env, err := childEnv("node", nodeConfig{
		Name: n.name, Interface: wgIface, ListenPort: listenPort, KeyFile: n.keyFile, MTU: 1420,
		Spec: tp.spec, AnnDir: tp.annDir, Resync: resync, Poll: poll, Hosts: n.hosts, DebugJSON: true,
		// Not beside the key file: a rotation must leave that directory
		// holding the key alone.
		RunDir: filepath.Join(tp.dir, n.name+"-run"), CNIConfDir: filepath.Join(tp.dir, n.name+"-net.d"),
	})
	if err != nil {
		t.Fatal(err)
	}
	n.agent = n.ns.Start(t, n.name+" agent", env, tp.self)
}

func (tp *topo) node(name string) *hnode {
	for _, n := range tp.nodes {
		if n.name == name {
			return n
		}
	}
	tp.t.Fatalf("no node %s", name)
	return nil
}

// annotate sets annotations on a node as an operator would.
func (tp *topo) annotate(node string, ann map[string]string) {
	tp.t.Helper()
	if err := filesource.Annotate(tp.annDir, node, ann); err != nil {
		tp.t.Fatal(err)
	}
}

func (tp *topo) annotations(node string) map[string]string {
	tp.t.Helper()
	a, err := filesource.Annotations(tp.annDir, node)
	if err != nil {
		tp.t.Fatal(err)
	}
	return a
}

// wgPeer is one peer line of `wg show wgmesh0 dump`.
type wgPeer struct {
	key, endpoint, allowedIPs string
	handshake                 time.Time
	keepalive                 string
}

// peers reads the node's device with the stock wg tool, by public key.
func (n *hnode) peers(t *testing.T) map[string]wgPeer {
	t.Helper()
	m, err := n.peersE()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (n *hnode) peersE() (map[string]wgPeer, error) {
	out, err := wgShow(n.agent, "dump")
	if err != nil {
		return nil, err
	}
	m := map[string]wgPeer{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		if i == 0 || len(f) < 8 {
			continue // the interface line
		}
		p := wgPeer{key: f[0], endpoint: f[2], allowedIPs: f[3], keepalive: f[7]}
		if s, err := strconv.ParseInt(f[4], 10, 64); err == nil && s > 0 {
			p.handshake = time.Unix(s, 0)
		}
		m[p.key] = p
	}
	return m, nil
}

func (n *hnode) publicKey(t *testing.T) string {
	t.Helper()
	pub, err := n.publicKeyE()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// publicKeyE reads the node's public key from its agent's key file, which
// the agent writes (atomically) only once it runs: before that it is an
// error to wait on, not a failure.
func (n *hnode) publicKeyE() (string, error) {
	k, err := wgdev.LoadKey(n.keyFile)
	if err != nil {
		return "", err
	}
	return k.PublicKey().String(), nil
}

// waitMesh waits until every node has every other as a peer with the
// current key, and its dataplane routes the other's pods through the mesh.
func (tp *topo) waitMesh(timeout time.Duration) {
	t := tp.t
	t.Helper()
	for _, n := range tp.nodes {
		for _, o := range tp.nodes {
			if o == n {
				continue
			}
			netnstest.Eventually(t, timeout, n.name+" has peer "+o.name, func() error {
				for _, x := range []*hnode{n, o} {
					if x.agent.Exited() {
						t.Fatalf("%s agent exited:\n%s", x.name, x.agent.Output())
					}
				}
				// o's agent may not have written its key yet (CI: node a
				// looked for b's key 0.86 s after the agents started).
				pub, err := o.publicKeyE()
				if err != nil {
					return fmt.Errorf("%s's key: %w", o.name, err)
				}
				peers, err := n.peersE()
				if err != nil {
					return err
				}
				if p, ok := peers[pub]; !ok || p.allowedIPs != o.podCIDR.String() {
					return fmt.Errorf("no peer %s with %s", pub, o.podCIDR)
				}
				if route, err := n.ns.Run("ip", "route", "get", o.wgAddr.String()); err != nil || !strings.Contains(route, "dev "+wgIface) {
					return fmt.Errorf("route to %s: %q (%v)", o.wgAddr, route, err)
				}
				return nil
			})
		}
	}
}

// pinger is a ping running in the background with a timestamp per reply.
type pinger struct {
	from, to string
	proc     *netnstest.Proc
	interval time.Duration
}

// startPing pings dst from the node every interval until stopped.
func startPing(t *testing.T, from *hnode, to *hnode, interval time.Duration) *pinger {
	t.Helper()
	p := from.ns.Start(t, fmt.Sprintf("ping %s->%s", from.name, to.name), nil,
		"ping", "-D", "-n", "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", to.wgAddr.String())
	return &pinger{from: from.name, to: to.name, proc: p, interval: interval}
}

// stop ends the ping and evaluates its replies in [from, to].
func (p *pinger) stop(t *testing.T, from, to time.Time) pingout.Gap {
	t.Helper()
	if err := p.proc.Stop(syscall.SIGINT, 5*time.Second); err != nil {
		// ping exits 1 when replies were missing: that is data here.
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%s: %v", p.proc.Name, err)
		}
	}
	return pingout.Parse(p.proc.Output()).Gap(from, to, p.interval)
}
