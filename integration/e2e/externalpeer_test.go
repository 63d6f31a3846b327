package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/integration/internal/labtest"
	"github.com/wgmesh/wgmesh/integration/lab"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// External peer addresses: the client's tunnel address lies outside the
// cluster's pod range (so kube-proxy would masquerade its Service traffic
// at the gateway), its underlay address beyond any lab node's.
const (
	extTunnelIP   = "203.0.113.250"
	extUnderlayIP = "198.51.100.250"
)

// TestExternalPeer is the lab proof of issue 17's external peers: a Peer
// object for a client outside the cluster is added to every node's device,
// a Peer overlapping a node's pod CIDR is refused (status condition and
// Event) without touching the mesh, and a stock WireGuard client (Debian's
// wireguard-go, configured with `wg setconf` and ip(8) from the config
// `wgmeshctl peer-config` printed, as wg-quick would) in a namespace of its
// own on the underlay reaches every pod, and every pod reaches it. The
// underlay meanwhile carries WireGuard only: no pod or tunnel address.
func TestExternalPeer(t *testing.T) {
	l := newLab(t, 2, 1)
	ctx := context.Background()
	st := l.State()
	dyn, err := l.Dynamic()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	mkPeer := func(name string, allowed ...any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
			"metadata": map[string]any{"name": name},
			"spec":     map[string]any{"allowedIPs": allowed},
		}}
		k := priv.PublicKey().String()
		if name != "laptop" {
			other, _ := wgtypes.GeneratePrivateKey()
			k = other.PublicKey().String()
		}
		unstructured.SetNestedField(u.Object, k, "spec", "publicKey")
		if _, err := dyn.Resource(kube.PeerGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create Peer %s: %v", name, err)
		}
	}
	mkPeer("laptop", extTunnelIP+"/32")
	mkPeer("thief", st.Nodes["node1"].PodCIDR)

	// Status, written by one agent: laptop accepted, thief refused, with
	// an Event on it.
	conds := map[string]string{}
	if _, ok := lab.WaitFor(ctx, 30*time.Second, 200*time.Millisecond, func() bool {
		for _, name := range []string{"laptop", "thief"} {
			u, err := dyn.Resource(kube.PeerGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			p := kube.RawExternalPeer(u)
			conds[name] = p.Status.Accepted + "/" + p.Status.Reason
		}
		return conds["laptop"] == "True/" && conds["thief"] == "False/overlaps-pod-cidr"
	}); !ok {
		t.Fatalf("Peer conditions %v, want laptop True and thief False/overlaps-pod-cidr", conds)
	}
	admin, err := l.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lab.WaitFor(ctx, 15*time.Second, 200*time.Millisecond, func() bool {
		ev, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", "thief").String()})
		return err == nil && len(ev.Items) > 0 && ev.Items[0].Reason == "OverlapsPodCidr"
	}); !ok {
		t.Error("no OverlapsPodCidr Event on Peer thief")
	}

	// Every node: the laptop as a peer, node1's pod CIDR still its own.
	waitExtPeer(t, ctx, l, priv.PublicKey(), extTunnelIP+"/32", 15*time.Second)
	requireMatrix(t, ctx, l)

	// The config, as an operator prints it (admin kubeconfig, from the
	// underlay where the apiserver is).
	conf := peerConfig(t, l, "laptop")
	if !strings.Contains(conf, "Address = "+extTunnelIP+"/32") || !strings.Contains(conf, lab.ServiceCIDR) {
		t.Errorf("config lacks the laptop's address or the Service range %s", lab.ServiceCIDR)
	}

	ns := startExtClient(t, l, conf, priv)

	ulns, br := l.Underlay()
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capt := startCapture(t, labtest.Tcpdump([]string{"ip", "netns", "exec", ulns}, "-i", br, "-s", "0", "-w", pcap))
	pods := l.Pods()
	for _, p := range pods {
		// The first packets wait for the handshake: retried for 20 s
		// (a handshake is one round trip; the bound is for a loaded box).
		took, ok := lab.WaitFor(ctx, 20*time.Second, 0, func() bool {
			return exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", p.IP).Run() == nil
		})
		if !ok {
			t.Errorf("client cannot reach pod %s/%s %s", p.Node, p.Pod, p.IP)
			continue
		}
		t.Logf("client reaches %s/%s (%s) after %s", p.Node, p.Pod, p.IP, took.Round(time.Millisecond))
		if out, err := l.PodExec(ctx, p.Node, p.Pod, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", extTunnelIP); err != nil {
			t.Errorf("pod %s/%s cannot reach the client: %v\n%s", p.Node, p.Pod, err, out)
		}
	}
	capt.stop()
	frames, err := readPcap(pcap)
	if err != nil {
		t.Fatal(err)
	}
	wg, bad := extClientFrames(frames, netip.MustParsePrefix(podCIDRs))
	t.Logf("underlay: %d frames, %d WireGuard to/from the client, %d with a pod or tunnel address", len(frames), wg, bad)
	if bad > 0 {
		t.Errorf("%d frames on the underlay carry a pod or tunnel address", bad)
	}
	if wg < 4*len(pods) {
		t.Errorf("only %d WireGuard frames of the client captured for %d pods: the capture missed the traffic", wg, len(pods))
	}
	requireMatrix(t, ctx, l)
}

// waitExtPeer fails t unless, within bound, every node's device has the
// external peer pub, with exactly the allowed IPs allowed when it is not
// empty. The agents watch Peers: a change reaches every device within a
// pass.
func waitExtPeer(t *testing.T, ctx context.Context, l *lab.Lab, pub wgtypes.Key, allowed string, bound time.Duration) {
	t.Helper()
	for _, name := range l.State().NodeNames() {
		if _, ok := lab.WaitFor(ctx, bound, 200*time.Millisecond, func() bool {
			peers, err := wgPeers(ctx, l, name)
			if err != nil {
				return false
			}
			for _, p := range peers {
				if p.PublicKey == pub.String() && (allowed == "" || strings.Join(p.AllowedIPs, ",") == allowed) {
					return true
				}
			}
			return false
		}); !ok {
			t.Fatalf("%s never got the external peer %s (allowed IPs %q)", name, pub, allowed)
		}
	}
}

// peerConfig is `wgmeshctl peer-config name` as an operator prints it (the
// admin kubeconfig, from the underlay where the apiserver is).
func peerConfig(t *testing.T, l *lab.Lab, name string) string {
	t.Helper()
	ctl := filepath.Join(binDir, "wgmeshctl")
	argv := []string{"nsenter", "--net=/run/netns/" + l.State().Underlay, "--", ctl, "--kubeconfig=" + l.AdminKubeconfig(), "peer-config", name}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("wgmeshctl peer-config %s: %v\n%s", name, err, out)
	}
	t.Logf("wgmeshctl peer-config %s:\n%s", name, out)
	return string(out)
}

// extClientFrames counts the IPv4 underlay frames of an external-peer test:
// wg is UDP to or from the client's underlay address (its WireGuard), bad
// those with an address in one of forbidden or the client's tunnel address.
func extClientFrames(frames []frame, forbidden ...netip.Prefix) (wg, bad int) {
	tunnel := netip.MustParseAddr(extTunnelIP)
	client := netip.MustParseAddr(extUnderlayIP)
	in := func(a netip.Addr) bool {
		return a == tunnel || slices.ContainsFunc(forbidden, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	for _, f := range frames {
		if f.EtherType != 0x0800 {
			continue
		}
		switch {
		case in(f.Src) || in(f.Dst):
			bad++
		case f.Proto == 17 && (f.Src == client || f.Dst == client):
			wg++
		}
	}
	return wg, bad
}

// startExtClient brings up the external peer's client for t: a namespace
// of its own on the underlay (extUnderlayIP) running Debian's wireguard-go,
// configured from conf (what `wgmeshctl peer-config` printed) with the
// private key filled in, as wg-quick does: `wg setconf` with the Address
// stripped, the address and a route per AllowedIPs added with ip(8). It
// returns the namespace's name; t's clean-up removes it all.
func startExtClient(t *testing.T, l *lab.Lab, conf string, priv wgtypes.Key) string {
	t.Helper()
	ctx := context.Background()
	st := l.State()
	_, br := l.Underlay()
	// The client: its own namespace on the underlay, Debian's wireguard-go.
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	ns := st.NetnsPrefix + "ext"
	ifname := "wgx" + hex.EncodeToString(rnd[:])
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	for _, a := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", st.Underlay, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", st.Underlay, "link", "set", "ext0", "master", br, "up"},
		{"ip", "-n", ns, "addr", "add", extUnderlayIP + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command(a[0], a[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", a, err, out)
		}
	}
	wgGo := exec.Command("ip", "netns", "exec", ns, "wireguard-go", "-f", ifname)
	wgGo.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	var wgOut strings.Builder
	wgGo.Stdout, wgGo.Stderr = &wgOut, &wgOut
	if err := wgGo.Start(); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join("/var/run/wireguard", ifname+".sock")
	t.Cleanup(func() {
		_ = wgGo.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = wgGo.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = wgGo.Process.Kill()
			<-done
		}
		_ = os.Remove(sock)
	})
	if _, ok := lab.WaitFor(ctx, 10*time.Second, 50*time.Millisecond, func() bool {
		_, err := os.Stat(sock)
		return err == nil
	}); !ok {
		t.Fatalf("wireguard-go made no UAPI socket:\n%s", wgOut.String())
	}
	setconf, addrs, routes := wgQuickStrip(t, strings.Replace(conf, "<private key>", priv.String(), 1))
	confFile := filepath.Join(t.TempDir(), "laptop.conf")
	if err := os.WriteFile(confFile, []byte(setconf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmds := [][]string{{"ip", "netns", "exec", ns, "wg", "setconf", ifname, confFile}}
	for _, a := range addrs {
		cmds = append(cmds, []string{"ip", "-n", ns, "addr", "add", a, "dev", ifname})
	}
	cmds = append(cmds, []string{"ip", "-n", ns, "link", "set", ifname, "up"})
	for _, r := range routes {
		cmds = append(cmds, []string{"ip", "-n", ns, "route", "add", r, "dev", ifname})
	}
	for _, a := range cmds {
		if out, err := exec.Command(a[0], a[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", a, err, out)
		}
	}

	return ns
}

// wgQuickStrip does what `wg-quick strip` and wg-quick's up do with a
// config: it returns the config without the wg-quick keys (Address), the
// addresses, and a route per allowed IP of every [Peer].
func wgQuickStrip(t *testing.T, conf string) (setconf string, addrs, routes []string) {
	t.Helper()
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(conf))
	for sc.Scan() {
		line := sc.Text()
		key, val, ok := strings.Cut(line, "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case ok && key == "Address":
			for _, a := range strings.Split(val, ",") {
				addrs = append(addrs, strings.TrimSpace(a))
			}
			continue
		case ok && key == "AllowedIPs":
			for _, a := range strings.Split(val, ",") {
				routes = append(routes, strings.TrimSpace(a))
			}
		}
		fmt.Fprintln(&b, line)
	}
	if len(addrs) == 0 || len(routes) == 0 {
		t.Fatalf("config has no Address or AllowedIPs:\n%s", conf)
	}
	return b.String(), addrs, routes
}
