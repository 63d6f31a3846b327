package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
)

// TestLocations is the lab proof of issue 17's locations: node1 has no
// location, node2 and node3 share location a, node4 and node5 location b.
// Each location is a network of its own (203.0.113.0/24 on eth1, the
// nodes' InternalIPs) that the underlay cannot reach; the agents publish
// their underlay address as the public endpoint. Pods ping every pod;
// captures of the underlay and of both location networks then show
// WireGuard between location-mates only on their private addresses, every
// other pair only on public addresses, and no frame with a pod address or
// the ping payload anywhere.
func TestLocations(t *testing.T) {
	l := newLab(t, 1, 1)
	ctx := context.Background()
	locOf := map[string]string{"node1": ""}
	for _, loc := range []string{"a", "a", "b", "b"} {
		n, err := l.AddNode(ctx, lab.NodeOptions{Location: loc, Pods: 1})
		if err != nil {
			t.Fatal(err)
		}
		locOf[n.Name] = loc
	}
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	// What the agents published: the private endpoint on the location's
	// network, the public one on the underlay.
	for _, name := range st.NodeNames() {
		n := st.Nodes[name]
		obj, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := obj.Annotations
		wantPriv := ""
		if n.Location != "" {
			wantPriv = fmt.Sprintf("%s:%d", n.PrivateIP, listenPort)
		}
		if a[mesh.AnnotationPrivateEndpoint] != wantPriv || a[mesh.AnnotationEndpoint] != fmt.Sprintf("%s:%d", n.UnderlayIP, listenPort) {
			t.Errorf("%s publishes endpoint %q, private endpoint %q; want %s:%d and %q", name,
				a[mesh.AnnotationEndpoint], a[mesh.AnnotationPrivateEndpoint], n.UnderlayIP, listenPort, wantPriv)
		}
	}
	requireMatrix(t, ctx, l)

	// Every node's device: location-mates at their private endpoint.
	for _, name := range st.NodeNames() {
		peers, err := wgPeers(ctx, l, name)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, p := range peers {
			got[p.Endpoint] = p.PublicKey
		}
		for _, other := range st.NodeNames() {
			if other == name {
				continue
			}
			o := st.Nodes[other]
			want := o.UnderlayIP
			if mesh.SameLocation(locOf[name], locOf[other]) {
				want = o.PrivateIP
			}
			if _, ok := got[fmt.Sprintf("%s:%d", want, listenPort)]; !ok {
				t.Errorf("%s has no peer at %s:%d for %s (peers at %v)", name, want, listenPort, other, got)
			}
		}
	}

	// The captures, while every pod pings every other with a pattern.
	dir := t.TempDir()
	type net struct {
		name, ns, br, pcap string
		caps               *capture
	}
	nets := []*net{{name: "underlay"}, {name: "location a"}, {name: "location b"}}
	nets[0].ns, nets[0].br = l.Underlay()
	nets[1].ns, nets[1].br = l.Location("a")
	nets[2].ns, nets[2].br = l.Location("b")
	for i, n := range nets {
		n.pcap = filepath.Join(dir, fmt.Sprintf("net%d.pcap", i))
		n.caps = startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", n.ns}, "-i", n.br, "-s", "0", "-w", n.pcap))
	}
	const pattern = "deadbeef0badf00dcafebabe8badf00d"
	byNode := podsByNode(l)
	for _, a := range st.NodeNames() {
		for _, b := range st.NodeNames() {
			if a == b {
				continue
			}
			from, to := byNode[a][0], byNode[b][0]
			if out, err := l.PodExec(ctx, from.Node, from.Pod, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-p", pattern, to.IP); err != nil {
				t.Errorf("ping %s -> %s: %v\n%s", a, b, err, out)
			}
		}
	}
	for _, n := range nets {
		n.caps.stop()
	}

	// Addresses to node names, for the pair counts.
	nodeAt := map[netip.Addr]string{}
	for _, name := range st.NodeNames() {
		n := st.Nodes[name]
		nodeAt[netip.MustParseAddr(n.UnderlayIP)] = name
		if n.PrivateIP != "" {
			nodeAt[netip.MustParseAddr(n.PrivateIP)] = name
		}
	}
	payload, _ := hex.DecodeString(pattern)
	podNet := netip.MustParsePrefix(podCIDRs)
	private := netip.MustParsePrefix("203.0.113.0/24")
	apiserver := netip.MustParseAddr(lab.UnderlayGateway)
	for _, n := range nets {
		frames, err := readPcap(n.pcap)
		if err != nil {
			t.Fatal(err)
		}
		pairs := map[string]int{}
		var bad []string
		wg := 0
		for i, f := range frames {
			if bytes.Contains(f.Raw, payload) {
				bad = append(bad, fmt.Sprintf("frame %d carries the ping payload in the clear", i))
			}
			switch f.EtherType {
			case 0x0806:
				if podNet.Contains(f.ARPSender) || podNet.Contains(f.ARPTarget) {
					bad = append(bad, fmt.Sprintf("frame %d: ARP for a pod address", i))
				}
			case 0x0800:
				a, b := nodeAt[f.Src], nodeAt[f.Dst]
				switch {
				case podNet.Contains(f.Src) || podNet.Contains(f.Dst):
					bad = append(bad, fmt.Sprintf("frame %d: %s -> %s carries a pod address", i, f.Src, f.Dst))
				case f.Proto == 17 && a != "" && b != "" && (f.SrcPort == listenPort || f.DstPort == listenPort):
					wg++
					same := mesh.SameLocation(locOf[a], locOf[b])
					onPrivate := private.Contains(f.Src) && private.Contains(f.Dst)
					if same != onPrivate {
						bad = append(bad, fmt.Sprintf("frame %d: WireGuard %s (%s) -> %s (%s): location-mates %v, on private addresses %v",
							i, f.Src, a, f.Dst, b, same, onPrivate))
					}
					x, y := min(a, b), max(a, b)
					pairs[x+"-"+y]++
				case n.name == "underlay" && f.Proto == 6 && (f.Src == apiserver || f.Dst == apiserver):
				case f.Proto == 2 && f.Dst.IsLinkLocalMulticast():
					// IGMP membership reports of a link coming up
					// (0.0.0.0 -> 224.0.0.22): link-level, no pod in it.
				default:
					bad = append(bad, fmt.Sprintf("frame %d: unexpected %s:%d -> %s:%d proto %d", i, f.Src, f.SrcPort, f.Dst, f.DstPort, f.Proto))
				}
			case 0x86dd:
				if !f.Src.IsLinkLocalUnicast() && !f.Src.IsUnspecified() {
					bad = append(bad, fmt.Sprintf("frame %d: IPv6 %s -> %s", i, f.Src, f.Dst))
				}
			default:
				bad = append(bad, fmt.Sprintf("frame %d: ethertype %#04x", i, f.EtherType))
			}
		}
		t.Logf("%s capture: %d frames, %d WireGuard; per node pair %v; %d violations", n.name, len(frames), wg, pairs, len(bad))
		if len(bad) > 0 {
			if len(bad) > 20 {
				bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
			}
			t.Errorf("%s:\n%s", n.name, strings.Join(bad, "\n"))
		}
		// Each pair that should cross this network did (6 pings and
		// replies per pair, as WireGuard data frames at least).
		var want []string
		switch n.name {
		case "underlay":
			for _, a := range st.NodeNames() {
				for _, b := range st.NodeNames() {
					if a < b && !mesh.SameLocation(locOf[a], locOf[b]) {
						want = append(want, a+"-"+b)
					}
				}
			}
		case "location a":
			want = []string{"node2-node3"}
		case "location b":
			want = []string{"node4-node5"}
		}
		for _, p := range want {
			if pairs[p] < 12 {
				t.Errorf("%s: %d WireGuard frames between %s, want at least 12 (3 pings each way, and replies)", n.name, pairs[p], p)
			}
		}
		if len(pairs) != len(want) {
			t.Errorf("%s: WireGuard between pairs %v, want exactly %v", n.name, pairs, want)
		}
	}
}
