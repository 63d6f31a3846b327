package kube

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// BenchmarkNodeChange5000 is integration/bench's scale role without root:
// 5000 Nodes in client-go's fake clientset, this source's informer and
// lister, the reconciler's Run loop, an in-memory device and dataplane.
// Each iteration updates one Node's endpoint through the API and waits
// until the device has it (API update → informer → signal → incremental
// pass → device write); it also reports the pass itself.
func BenchmarkNodeChange5000(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 5000
	client := fake.NewClientset()
	objs := make([]*v1.Node, n)
	for i := range n {
		var k wgtypes.Key
		k[0], k[1], k[31] = byte(i), byte(i>>8), 0x42
		pod := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i * 8 >> 8), byte(i * 8 & 0xff)}), 29)
		objs[i] = &v1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%05d", i), UID: types.UID(fmt.Sprint(i)),
				Annotations: map[string]string{mesh.AnnotationPublicKey: k.String(),
					mesh.AnnotationEndpoint: fmt.Sprintf("198.51.100.%d:%d", 10+i%240, 20000+i)}},
			Spec:   v1.NodeSpec{PodCIDRs: []string{pod.String()}},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 10+i%240)}}},
		}
		if _, err := client.CoreV1().Nodes().Create(ctx, objs[i], metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	src, err := New(Config{Client: client, NodeName: objs[0].Name})
	if err != nil {
		b.Fatal(err)
	}
	dev := meshtest.NewDevice("wgmesh0")
	passes := make(chan mesh.Status, 64)
	r := mesh.New(mesh.Config{NodeName: objs[0].Name, PublicKey: wgtypes.Key{1, 2, 3}, ListenPort: 51820, MTU: 1420,
		Source: src, Device: dev, Dataplane: &meshtest.Dataplane{}, Resync: time.Hour,
		OnReconcile: func(s mesh.Status) {
			select {
			case passes <- s:
			default:
			}
		}})
	go src.Run(ctx)
	go r.Run(ctx)
	peerEP := func(k wgtypes.Key) string {
		d, _ := dev.Device()
		for _, p := range d.Peers {
			if p.PublicKey == k && p.Endpoint != nil {
				return p.Endpoint.String()
			}
		}
		return ""
	}
	k1, _ := wgtypes.ParseKey(objs[1].Annotations[mesh.AnnotationPublicKey])
	for deadline := time.Now().Add(2 * time.Minute); peerEP(k1) == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no full reconcile within 2 minutes")
		}
	}
	time.Sleep(time.Second) // let the passes after the first settle
	for len(passes) > 0 {
		<-passes
	}
	var passTotal time.Duration
	incremental, port := 0, 40000
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		o := objs[1+i%(n-1)].DeepCopy()
		port++
		ep := fmt.Sprintf("198.51.100.%d:%d", 10+(1+i%(n-1))%240, port)
		o.Annotations[mesh.AnnotationEndpoint] = ep
		k, _ := wgtypes.ParseKey(o.Annotations[mesh.AnnotationPublicKey])
		if _, err := client.CoreV1().Nodes().Update(ctx, o, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		for {
			s := <-passes
			if peerEP(k) == ep {
				passTotal += s.Duration
				if s.Incremental {
					incremental++
				}
				break
			}
		}
	}
	b.ReportMetric(float64(passTotal.Microseconds())/1000/float64(b.N), "pass-ms/op")
	b.ReportMetric(float64(incremental)/float64(b.N), "incremental/op")
}
