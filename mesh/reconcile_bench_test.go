package mesh_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// benchCluster is self plus n-1 valid peers with distinct keys, endpoints
// and /29 pod prefixes, as integration/bench's scale role makes them.
func benchCluster(n int) []mesh.RawNode {
	out := []mesh.RawNode{{Name: "n0", PodCIDRs: []string{"10.244.0.0/29"}, InternalIPs: []string{"198.51.100.10"}}}
	for i := 1; i < n; i++ {
		var k wgtypes.Key
		k[0], k[1], k[31] = byte(i), byte(i>>8), 0x42
		pod := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i * 8 >> 8), byte(i * 8 & 0xff)}), 29)
		out = append(out, mesh.RawNode{
			Name: fmt.Sprintf("node-%05d", i),
			Annotations: map[string]string{
				mesh.AnnotationPublicKey: k.String(),
				mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:%d", 10+i%240, 20000+i),
			},
			PodCIDRs:        []string{pod.String()},
			ResourceVersion: "1",
			Created:         time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
		})
	}
	return out
}

// cachedSource returns the same translated Nodes on every call, as the
// kube source does for Nodes that did not change (meshtest.Source copies
// every Node on every call, which would dominate the timings).
type cachedSource struct {
	*meshtest.Source
	raws []mesh.RawNode
}

func (s *cachedSource) Nodes() ([]mesh.RawNode, error) { return slices.Clone(s.raws), nil }

// BenchmarkReconcile5000 times the passes at 5000 Nodes against the
// in-memory device and dataplane (so without the UAPI read and the
// netlink work of integration/bench's scale role, which measures those):
// a no-op and a one-endpoint change on a change signal (the incremental
// path), and a no-op full pass (the periodic resync). The source hands out
// the same Nodes each time, as the kube source's translation cache does.
func BenchmarkReconcile5000(b *testing.B) {
	ctx := context.Background()
	nodes := benchCluster(5000)
	src := &cachedSource{Source: meshtest.NewSource("n0", nodes...), raws: nodes}
	r := mesh.New(mesh.Config{NodeName: "n0", PublicKey: key(250), ListenPort: 51820, MTU: 1420,
		Source: src, Device: meshtest.NewDevice("wgmesh0"), Dataplane: &meshtest.Dataplane{}})
	for range 2 { // the second makes the incremental path available
		if err := r.Reconcile(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("noop-signal", func(b *testing.B) {
		for b.Loop() {
			if err := r.ReconcileChanged(ctx); err != nil {
				b.Fatal(err)
			}
			if !r.Status().Incremental {
				b.Fatal("full pass")
			}
		}
	})
	b.Run("change-signal", func(b *testing.B) {
		n := nodes[1]
		port := 30000
		for b.Loop() {
			b.StopTimer()
			port++
			n.Annotations = map[string]string{
				mesh.AnnotationPublicKey: n.Annotations[mesh.AnnotationPublicKey],
				mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.11:%d", port),
			}
			nodes[1] = n
			b.StartTimer()
			if err := r.ReconcileChanged(ctx); err != nil {
				b.Fatal(err)
			}
			if !r.Status().Incremental {
				b.Fatal("full pass")
			}
		}
	})
	b.Run("noop-full", func(b *testing.B) {
		for b.Loop() {
			if err := r.Reconcile(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
