package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/show"
)

// TestRelay is the lab proof of issue 17's relays: node2 and node3 are
// each behind a NAT of their own and publish their inside address
// (203.0.113.2), so neither can reach the other; node1 is public and
// marked wgmesh.io/relay=true. The NAT'd nodes keep their mappings open
// with a keepalive, so both reach node1. The ping matrix must become
// complete, node2 and node3 must each report the other as relayed via
// node1 (wgmeshctl show), node1's peer must carry the far node's pod CIDR,
// and the underlay must carry no pod address and no WireGuard between the
// two NAT'd nodes.
func TestRelay(t *testing.T) {
	l := newLab(t, 1, 1)
	ctx := context.Background()
	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	rnAnnotate(t, c, "node1", map[string]string{mesh.AnnotationRelay: "true"})
	var natted []*lab.Node
	for range 2 {
		n, err := l.AddNode(ctx, lab.NodeOptions{NAT: true, NoWait: true})
		if err != nil {
			t.Fatal(err)
		}
		rnAnnotate(t, c, n.Name, map[string]string{mesh.AnnotationKeepalive: "2"})
		natted = append(natted, n)
	}
	for _, n := range natted {
		if err := l.WaitAgentReady(ctx, n.Name, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, err := l.AddPod(ctx, n.Name); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Load(); err != nil {
		t.Fatal(err)
	}
	st := l.State()

	ns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", ns}, "-i", br, "-s", "128", "-w", pcap))
	start := time.Now()
	// The relay takes over 15 s (RelayAfter) after the NAT'd pair wanted
	// each other; a pass and the matrix run itself (matrixBound) on top.
	requireMatrixWithin(t, ctx, l.PingMatrix, mesh.DefaultRelayAfter+matrixBound)
	t.Logf("complete ping matrix %s after the NAT'd nodes' pods were up", time.Since(start).Round(time.Second))
	capt.stop()

	ctl := filepath.Join(binDir, "wgmeshctl")
	for i, n := range natted {
		far := natted[1-i]
		out, err := l.Exec(ctx, n.Name, ctl, "show", "-o", "json")
		if err != nil && !strings.Contains(err.Error(), "exit status 1") {
			t.Fatalf("wgmeshctl show on %s: %v\n%s", n.Name, err, out)
		}
		var r show.Report
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("wgmeshctl show -o json on %s: %v\n%s", n.Name, err, out)
		}
		via := map[string]string{}
		allowed := map[string]string{}
		for _, p := range r.Peers {
			via[p.Node] = p.RelayedVia
			allowed[p.Node] = strings.Join(p.AllowedIPs, ",")
		}
		if via[far.Name] != "node1" || via["node1"] != "" {
			t.Errorf("%s: relayed peers %v, want %s via node1 only", n.Name, via, far.Name)
		}
		if !strings.Contains(allowed["node1"], far.PodCIDR) || strings.Contains(allowed[far.Name], far.PodCIDR) {
			t.Errorf("%s: device allowed IPs %v: want %s on node1's peer, not on %s's", n.Name, allowed, far.PodCIDR, far.Name)
		}
		t.Logf("%s: %s relayed via node1; node1's peer allows %s", n.Name, far.Name, allowed["node1"])
	}

	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	podNet := netip.MustParsePrefix(podCIDRs)
	pub := map[netip.Addr]string{}
	for _, name := range st.NodeNames() {
		pub[netip.MustParseAddr(st.Nodes[name].Endpoint())] = name
	}
	pairs := map[string]int{}
	bad := 0
	for _, f := range frames {
		if f.EtherType != 0x0800 {
			continue
		}
		if podNet.Contains(f.Src) || podNet.Contains(f.Dst) {
			bad++
			continue
		}
		a, b := pub[f.Src], pub[f.Dst]
		if f.Proto == 17 && a != "" && b != "" {
			pairs[min(a, b)+"-"+max(a, b)]++
		}
	}
	t.Logf("underlay: %d frames, WireGuard per node pair %v, %d with a pod address", len(frames), pairs, bad)
	if bad > 0 {
		t.Errorf("%d underlay frames carry a pod address", bad)
	}
	direct := fmt.Sprintf("%s-%s", natted[0].Name, natted[1].Name)
	if pairs[direct] > 0 {
		t.Errorf("%d WireGuard frames between the NAT'd nodes' public addresses: they were meant not to reach each other", pairs[direct])
	}
	for _, n := range natted {
		if pairs["node1-"+n.Name] == 0 {
			t.Errorf("no WireGuard between node1 and %s on the underlay", n.Name)
		}
	}
}
