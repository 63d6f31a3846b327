package lab

import (
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/show"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

// The kubelet mode's control plane (apiserver, controllers, cluster DNS in
// the underlay namespace) joins the pod network as an external Peer
// (wgmesh.io/v1alpha1, issue 17): the apiserver dials pods for its pod
// proxy (`.../pods/NAME:PORT/proxy`, which the upstream specs use), and in
// a real cluster it can because its host is on the pod network. The host
// runs Debian's wireguard-go configured as `wgmeshctl peer-config` says,
// every agent adds the Peer to its device, and the underlay namespace
// routes the cluster's pod range into that tunnel only: apiserver-to-pod
// traffic crosses the underlay encrypted, never in plaintext. A kubeadm
// control-plane node would run the DaemonSet instead; the lab's control
// plane has no kubelet, and an external Peer is how wgmesh lets a host
// without one join.
const (
	// ControlPlanePeer names the control plane's Peer object.
	ControlPlanePeer = "lab-control-plane"
	// ControlPlaneTunnelIP is the control plane's address on the pod
	// network: outside the cluster's pod range (Peers must not overlap a
	// podCIDR), from the lab's documentation range.
	ControlPlaneTunnelIP = "203.0.113.1"
)

// controlPlaneIfname is the control plane's WireGuard interface: unique per
// lab because wireguard-go's UAPI socket (wgdev.SocketPath) lives in the
// host's mount namespace, shared by every lab.
func controlPlaneIfname(lab string) string {
	return fmt.Sprintf("wgcp%08x", crc32.ChecksumIEEE([]byte(lab)))
}

func controlPlaneSocket(lab string) string {
	return wgdev.SocketPath(controlPlaneIfname(lab))
}

// joinControlPlane creates the control plane's Peer and WireGuard device
// (once) and configures the device for the nodes now in the mesh; AddNode
// calls it again for a new node.
func (l *Lab) joinControlPlane(ctx context.Context) error {
	return l.withState(func(st *State, save func() error) error {
		keyFile := filepath.Join(l.cfg.StateDir, "control-plane-wg.key")
		ifname := controlPlaneIfname(st.Name)
		if st.ControlPlaneWG == nil || !st.ControlPlaneWG.Alive() {
			key, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				return err
			}
			if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
				return fmt.Errorf("write control-plane key: %w", err)
			}
			if err := l.putControlPlanePeer(ctx, key.PublicKey()); err != nil {
				return err
			}
			// A socket left by a crashed lab of the same name would make
			// wireguard-go refuse to start.
			_ = os.Remove(controlPlaneSocket(st.Name))
			env := append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
			proc, err := startDetached([]string{"nsenter", "--net=" + netnsPath(st.Underlay), "--", "wireguard-go", "-f", ifname},
				l.logPath("control-plane-wg"), env)
			if err != nil {
				return err
			}
			st.ControlPlaneWG = &proc
			if err := save(); err != nil {
				return err
			}
			if _, ok := WaitFor(ctx, 10*time.Second, 50*time.Millisecond, func() bool {
				_, err := os.Stat(controlPlaneSocket(st.Name))
				return err == nil
			}); !ok {
				return fmt.Errorf("control plane: wireguard-go made no UAPI socket; log:\n%s", tailFile(l.logPath("control-plane-wg"), 20))
			}
			in := func(argv ...string) []string {
				return append([]string{"nsenter", "--net=" + netnsPath(st.Underlay), "--"}, argv...)
			}
			for _, argv := range [][]string{
				in("ip", "addr", "add", ControlPlaneTunnelIP+"/32", "dev", ifname),
				in("ip", "link", "set", ifname, "up"),
				// The whole pod range, so that no pod packet from here
				// can take another way; WireGuard sends each to the node
				// whose allowed IPs hold it and drops the rest.
				in("ip", "route", "replace", ClusterCIDR, "dev", ifname, "src", ControlPlaneTunnelIP),
			} {
				if err := run(ctx, argv...); err != nil {
					return fmt.Errorf("control plane: %w", err)
				}
			}
		}
		conf, err := l.controlPlanePeerConfig(ctx)
		if err != nil {
			return err
		}
		confFile := filepath.Join(l.cfg.StateDir, "control-plane-wg.conf")
		if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
			return fmt.Errorf("write control-plane config: %w", err)
		}
		// syncconf, not setconf: peers already talking keep their sessions.
		if err := run(ctx, "nsenter", "--net="+netnsPath(st.Underlay), "--", "wg", "syncconf", ifname, confFile); err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
		return nil
	})
}

// putControlPlanePeer creates (or updates) the control plane's Peer.
func (l *Lab) putControlPlanePeer(ctx context.Context, pub wgtypes.Key) error {
	dyn, err := l.Dynamic()
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
		"metadata": map[string]any{"name": ControlPlanePeer},
		"spec": map[string]any{
			"publicKey":  pub.String(),
			"allowedIPs": []any{ControlPlaneTunnelIP + "/32"},
		},
	}}
	res := dyn.Resource(kube.PeerGVR)
	_, err = res.Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		old, gerr := res.Get(ctx, ControlPlanePeer, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("get Peer %s: %w", ControlPlanePeer, gerr)
		}
		u.SetResourceVersion(old.GetResourceVersion())
		_, err = res.Update(ctx, u, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("put Peer %s: %w", ControlPlanePeer, err)
	}
	return nil
}

// controlPlanePeerConfig is `wgmeshctl peer-config lab-control-plane` for
// `wg syncconf`: the private key filled in, wg-quick's Address left out
// (joinControlPlane sets the address and the route itself). No Service
// range: the control plane reaches pods, not Services, through the mesh.
func (l *Lab) controlPlanePeerConfig(ctx context.Context) (string, error) {
	c, err := l.Admin()
	if err != nil {
		return "", err
	}
	dyn, err := l.Dynamic()
	if err != nil {
		return "", err
	}
	var in show.PeerConfigInput
	peers, err := dyn.Resource(kube.PeerGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list peers: %w", err)
	}
	for i := range peers.Items {
		p := kube.RawExternalPeer(&peers.Items[i])
		in.Peers = append(in.Peers, p)
		if p.Name == ControlPlanePeer {
			in.Peer = p
		}
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list nodes: %w", err)
	}
	in.Nodes = make([]mesh.RawNode, 0, len(nodes.Items))
	for i := range nodes.Items {
		in.Nodes = append(in.Nodes, kube.RawNode(&nodes.Items[i]))
	}
	var b strings.Builder
	if err := show.PeerConfig(&b, in); err != nil {
		return "", fmt.Errorf("control plane's peer config: %w", err)
	}
	key, err := os.ReadFile(filepath.Join(l.cfg.StateDir, "control-plane-wg.key"))
	if err != nil {
		return "", fmt.Errorf("read control-plane key: %w", err)
	}
	return setconfOf(b.String(), strings.TrimSpace(string(key))), nil
}

// setconfOf turns a wg-quick config into one `wg setconf` reads, as
// `wg-quick strip` does: the Address lines go; the private key placeholder
// is filled in.
func setconfOf(conf, privateKey string) string {
	var out []string
	for _, line := range strings.Split(conf, "\n") {
		key, _, _ := strings.Cut(line, "=")
		switch strings.TrimSpace(key) {
		case "Address":
			continue
		case "PrivateKey":
			line = "PrivateKey = " + privateKey
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// stopControlPlaneWG stops the control plane's wireguard-go and removes its
// socket (in the host's /var/run/wireguard, which outlives the lab).
func stopControlPlaneWG(st *State) error {
	if st.ControlPlaneWG != nil {
		if err := st.ControlPlaneWG.stop(syscall.SIGTERM, 5*time.Second); err != nil {
			return err
		}
		st.ControlPlaneWG = nil
	}
	if err := os.Remove(controlPlaneSocket(st.Name)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove control-plane socket: %w", err)
	}
	return nil
}

// waitControlPlaneAccepted waits for the agents' verdict on the control
// plane's Peer (status condition Accepted, written by one agent).
func (l *Lab) waitControlPlaneAccepted(ctx context.Context, timeout time.Duration) error {
	dyn, err := l.Dynamic()
	if err != nil {
		return err
	}
	var last mesh.RawExternalPeer
	if _, ok := WaitFor(ctx, timeout, 200*time.Millisecond, func() bool {
		u, err := dyn.Resource(kube.PeerGVR).Get(ctx, ControlPlanePeer, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = kube.RawExternalPeer(u)
		return last.Status.Accepted == "True"
	}); !ok {
		return fmt.Errorf("control plane: Peer %s not accepted by the agents after %s (status %+v)", ControlPlanePeer, timeout, last.Status)
	}
	return nil
}
