package e2e

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// TestExternalPeerService is the lab proof that an external peer reaches a
// Service: in the kubelet lab (real kubelet and kube-proxy per node, wgmesh
// from deploy/), an agnhost Deployment with one backend per node behind a
// ClusterIP Service, a Peer "laptop" (203.0.113.250/32, outside the pod
// range) and the stock wireguard-go client configured from `wgmeshctl
// peer-config laptop`. The Service range goes to the gateway node only; its
// kube-proxy DNATs to a backend anywhere and masquerades (the client is
// outside --cluster-cidr), so replies come back through the gateway. The
// client must get answers from backends on at least two nodes, one of them
// not the gateway, and the underlay must carry no pod, Service or tunnel
// address.
func TestExternalPeerService(t *testing.T) {
	l := newKubeletLab(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := l.Dynamic()
	if err != nil {
		t.Fatal(err)
	}
	requireMatrix(t, ctx, l)
	backends := deployEcho(t, ctx, c)
	svc := createEchoServices(t, ctx, c)
	nodeOf := map[string]string{}
	for _, b := range backends {
		nodeOf[b.Name] = b.Node
	}

	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
		"metadata": map[string]any{"name": "laptop"},
		"spec":     map[string]any{"allowedIPs": []any{extTunnelIP + "/32"}, "publicKey": priv.PublicKey().String()},
	}}
	if _, err := dyn.Resource(kube.PeerGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Peer laptop: %v", err)
	}
	// 30 s covers a pass on a loaded box.
	waitExtPeer(t, ctx, l, priv.PublicKey(), "", 30*time.Second)
	conf := peerConfig(t, l, "laptop")
	m := regexp.MustCompile(`# node (\S+), the gateway for the Service range`).FindStringSubmatch(conf)
	if m == nil || !strings.Contains(conf, lab.ServiceCIDR) {
		t.Fatalf("config names no gateway for the Service range %s", lab.ServiceCIDR)
	}
	gateway := m[1]
	ns := startExtClient(t, l, conf, priv)

	ulns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"nsenter", "--net=/run/netns/" + ulns, "--"}, "-i", br, "-s", "128", "-w", pcap))
	defer capt.stop()

	curl := func(path string) (string, error) {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-sS", "-m", "3", "http://"+svc.ClusterIP+path).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// kube-proxy balances at random: until backends on two nodes, one
	// not the gateway, have answered. The first request waits for the
	// handshake; 60 s and 3 s per request cover a loaded box.
	seen := map[string]int{}
	start := time.Now()
	_, ok := lab.WaitFor(ctx, 60*time.Second, 100*time.Millisecond, func() bool {
		name, err := curl("/hostname")
		if err != nil {
			return false
		}
		if n := nodeOf[name]; n != "" {
			seen[n]++
		}
		remote := false
		for n := range seen {
			remote = remote || n != gateway
		}
		return len(seen) >= 2 && remote
	})
	t.Logf("client → Service %s via gateway %s: answers per backend node %v within %s", svc.ClusterIP, gateway, seen, time.Since(start).Round(time.Millisecond))
	if !ok {
		t.Fatalf("the client did not reach backends on two nodes, one beyond the gateway %s, through Service %s: %v", gateway, svc.ClusterIP, seen)
	}
	if ip, err := curl("/clientip"); err == nil {
		t.Logf("a backend saw the client as %s (masqueraded by the gateway)", ip)
	}
	capt.stop()

	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	wg, bad := extClientFrames(frames, netip.MustParsePrefix(podCIDRs), netip.MustParsePrefix(lab.ServiceCIDR))
	t.Logf("underlay: %d frames, %d WireGuard to/from the client, %d with a pod, Service or tunnel address", len(frames), wg, bad)
	if bad > 0 {
		t.Errorf("%d frames on the underlay carry a pod, Service or tunnel address", bad)
	}
	if wg == 0 {
		t.Error("no WireGuard of the client captured: the capture missed the traffic")
	}
}
