package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
	"github.com/wgmesh/wgmesh/mesh/wgdev"
)

func kubeNode(i int) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i)},
		Spec:       v1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 10+i)},
		}},
	}
}

// testAgent is a reconciler on the fake clientset: the agent's logic with
// an in-memory device and a real key file.
type testAgent struct {
	dev     *meshtest.Device
	keyFile string
	rec     *mesh.Reconciler
}

func startTestAgent(t *testing.T, ctx context.Context, c *fake.Clientset, node string) *testAgent {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "private.key")
	priv, _, err := wgdev.LoadOrCreateKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	src, err := kube.New(kube.Config{Client: c, NodeName: node})
	if err != nil {
		t.Fatal(err)
	}
	dev := meshtest.NewDevice("wgmesh0")
	if err := dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv}); err != nil {
		t.Fatal(err)
	}
	rec := mesh.New(mesh.Config{
		NodeName: node, PublicKey: priv.PublicKey(), Keys: wgdev.KeyFile(keyFile), ListenPort: 51820,
		Source: src, Device: dev, Dataplane: &meshtest.Dataplane{}, Resync: time.Second,
	})
	go src.Run(ctx)
	go rec.Run(ctx)
	return &testAgent{dev: dev, keyFile: keyFile, rec: rec}
}

func (a *testAgent) peerKeys(t *testing.T) map[wgtypes.Key]string {
	d, err := a.dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	m := map[wgtypes.Key]string{}
	for _, p := range d.Peers {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		m[p.PublicKey] = fmt.Sprintf("%v %s", p.Endpoint, strings.Join(ips, ","))
	}
	return m
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRotateKeyEndToEnd: wgmeshctl's request reaches n0's agent through
// the API, which rotates (key file, device, annotation), and n1's agent
// swaps the peer.
func TestRotateKeyEndToEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := fake.NewClientset(kubeNode(0), kubeNode(1))
	a0 := startTestAgent(t, ctx, c, "n0")
	a1 := startTestAgent(t, ctx, c, "n1")
	oldPub := a0.rec.PublicKey()
	eventually(t, "n1 peers with n0", func() bool { _, ok := a1.peerKeys(t)[oldPub]; return ok })
	before := a1.peerKeys(t)[oldPub]

	res, err := rotateKey(ctx, c, rotateOptions{node: "n0", wait: 10 * time.Second, poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("rotateKey: %v", err)
	}
	if res.OldKey != oldPub.String() || res.NewKey == "" || res.NewKey == res.OldKey {
		t.Fatalf("result = %+v", res)
	}
	newPub, err := wgtypes.ParseKey(res.NewKey)
	if err != nil {
		t.Fatal(err)
	}
	// n0: the key file holds the new private key, the device uses it.
	priv, err := wgdev.LoadKey(a0.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if priv.PublicKey() != newPub {
		t.Error("key file does not hold the published key")
	}
	if d, _ := a0.dev.Device(); d.PublicKey != newPub {
		t.Errorf("n0 device public key %s, want %s", d.PublicKey, newPub)
	}
	// n1: the peer is swapped, with the same endpoint and allowed IPs.
	eventually(t, "n1 swaps n0's peer", func() bool {
		p := a1.peerKeys(t)
		_, hasOld := p[oldPub]
		return !hasOld && p[newPub] == before
	})
	t.Logf("rotation answered after %s; n1 peer: %s", res.Took, before)

	// The answered request is not repeated, and cannot be reused.
	if _, err := rotateKey(ctx, c, rotateOptions{node: "n0", request: res.Request, wait: time.Second}); err == nil ||
		!strings.Contains(err.Error(), "already used") {
		t.Errorf("reusing request %s: err = %v", res.Request, err)
	}
}

func TestRotateKeyErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("no such node", func(t *testing.T) {
		c := fake.NewClientset()
		if _, err := rotateKey(ctx, c, rotateOptions{node: "n9"}); err == nil || !strings.Contains(err.Error(), `"n9"`) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("no agent answers", func(t *testing.T) {
		c := fake.NewClientset(kubeNode(0))
		_, err := rotateKey(ctx, c, rotateOptions{node: "n0", wait: 200 * time.Millisecond, poll: 20 * time.Millisecond})
		if !errors.Is(err, ErrRotationTimeout) {
			t.Errorf("err = %v, want ErrRotationTimeout", err)
		}
		n, _ := c.CoreV1().Nodes().Get(ctx, "n0", metav1.GetOptions{})
		if n.Annotations[mesh.AnnotationRotateKey] == "" {
			t.Error("request not set on the node")
		}
	})
	t.Run("no wait", func(t *testing.T) {
		c := fake.NewClientset(kubeNode(0))
		res, err := rotateKey(ctx, c, rotateOptions{node: "n0", request: "r-1"})
		if err != nil || res.NewKey != "" {
			t.Fatalf("res %+v, err %v", res, err)
		}
		n, _ := c.CoreV1().Nodes().Get(ctx, "n0", metav1.GetOptions{})
		if n.Annotations[mesh.AnnotationRotateKey] != "r-1" {
			t.Errorf("annotations = %v", n.Annotations)
		}
	})
}

func TestNewRequestIDsDiffer(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	a, err1 := newRequestID(now)
	b, err2 := newRequestID(now)
	if err1 != nil || err2 != nil || a == b || !strings.HasPrefix(a, "20260501T120000Z-") {
		t.Errorf("ids %q %q (%v %v)", a, b, err1, err2)
	}
}

func TestRotateKeyCommandNeedsNode(t *testing.T) {
	var out, errb strings.Builder
	cmd := newCommand(&out, &errb)
	cmd.SetArgs([]string{"rotate-key", "--run-dir", t.TempDir()})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Errorf("err = %v, want a hint to pass --node-name", err)
	}
}
