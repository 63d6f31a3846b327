package translate

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	v1 "k8s.io/api/core/v1"

	"github.com/wgmesh/wgmesh/mesh"
)

// FuzzRawNode feeds arbitrary Node objects (as the API would serialise
// them) through the translation into the mesh's view and on into the
// core's validation and computation, as the agent does with every Node it
// lists. The translation must copy faithfully and deeply, and whatever the
// Node holds, the core must answer with a peer or an exclusion, never a
// panic. Seeds are in testdata/fuzz/FuzzRawNode.
func FuzzRawNode(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"n1","uid":"uid-1","resourceVersion":"7","creationTimestamp":"2025-01-01T00:01:00Z",` +
		`"annotations":{"wgmesh.io/public-key":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEI=","wgmesh.io/endpoint":"198.51.100.11:51820"}},` +
		`"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]},` +
		`"status":{"addresses":[{"type":"Hostname","address":"n1"},{"type":"InternalIP","address":"198.51.100.11"}]}}`))
	f.Add([]byte(`{"metadata":{"name":"n2","annotations":{"wgmesh.io/public-key":"x","wgmesh.io/persistent-keepalive":"1e9"}},"spec":{"podCIDR":"10.244.2.0/24"}}`))
	f.Add([]byte(`{"metadata":{"name":"n3"},"status":{"addresses":[{"type":"InternalIP","address":"::1"},{"type":"InternalIP","address":"nope"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var n v1.Node
		if err := json.Unmarshal(data, &n); err != nil {
			return
		}
		before, err := json.Marshal(&n)
		if err != nil {
			return
		}
		r := RawNode(&n)

		if r.Name != n.Name || r.UID != string(n.UID) || r.ResourceVersion != n.ResourceVersion || !r.Created.Equal(n.CreationTimestamp.Time) {
			t.Fatalf("metadata not copied: %+v", r)
		}
		if !maps.Equal(r.Annotations, n.Annotations) {
			t.Fatalf("annotations %v, want %v", r.Annotations, n.Annotations)
		}
		if !maps.Equal(r.Labels, n.Labels) {
			t.Fatalf("labels %v, want %v", r.Labels, n.Labels)
		}
		var wantCIDRs []string
		switch {
		case len(n.Spec.PodCIDRs) > 0:
			wantCIDRs = n.Spec.PodCIDRs
		case n.Spec.PodCIDR != "":
			wantCIDRs = []string{n.Spec.PodCIDR}
		}
		if !slices.Equal(r.PodCIDRs, wantCIDRs) {
			t.Fatalf("pod CIDRs %q, want %q", r.PodCIDRs, wantCIDRs)
		}
		var wantIPs []string
		for _, a := range n.Status.Addresses {
			if a.Type == v1.NodeInternalIP {
				wantIPs = append(wantIPs, a.Address)
			}
		}
		if !slices.Equal(r.InternalIPs, wantIPs) {
			t.Fatalf("internal IPs %q, want %q", r.InternalIPs, wantIPs)
		}
		// A deep copy: scribbling on the result leaves the cached object
		// alone.
		for k := range r.Annotations {
			r.Annotations[k] = "scribbled"
		}
		for k := range r.Labels {
			r.Labels[k] = "scribbled"
		}
		for i := range r.PodCIDRs {
			r.PodCIDRs[i] = "scribbled"
		}
		if after, _ := json.Marshal(&n); string(after) != string(before) {
			t.Fatal("RawNode shares memory with the Node")
		}

		r = RawNode(&n)
		node, err := mesh.ParseNode(r)
		if err != nil {
			var ne *mesh.NodeError
			if !errors.As(err, &ne) || ne.Reason == "" {
				t.Fatalf("ParseNode error %v is not a NodeError with a reason", err)
			}
		}
		var selfKey wgtypes.Key
		selfKey[0] = 200
		d := mesh.Compute(mesh.Input{Self: mesh.Self{Name: "self", PublicKey: selfKey}, Nodes: []mesh.RawNode{r}})
		if r.Name == "self" {
			return
		}
		if len(d.Peers)+len(d.Excluded) != 1 {
			t.Fatalf("node neither peer nor excluded: %+v", d)
		}
		if (err == nil) != (len(d.Peers) == 1) && !(err == nil && len(d.Excluded) == 1 && d.Excluded[0].Reason == mesh.ReasonSameKeyAsSelf) {
			t.Fatalf("ParseNode err=%v but Compute gave %+v", err, d)
		}
		if err == nil && len(d.Peers) == 1 && !slices.Equal(d.Peers[0].AllowedIPs, node.PodCIDRs) {
			t.Fatalf("peer allowed IPs %v, node pod CIDRs %v", d.Peers[0].AllowedIPs, node.PodCIDRs)
		}
	})
}
