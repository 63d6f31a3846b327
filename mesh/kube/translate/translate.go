// Package translate turns Kubernetes Node objects into the mesh core's view
// (mesh.RawNode). It is kept apart from package kube so that it depends on
// the API types alone, not on client-go: its fuzz target then builds in
// seconds rather than minutes.
package translate

import (
	"maps"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/wgmesh/wgmesh/mesh"
)

// RawNode translates a Node object into the mesh's view, copying
// everything so the cached object is never shared.
func RawNode(n *v1.Node) mesh.RawNode {
	r := mesh.RawNode{
		Name:            n.Name,
		Annotations:     maps.Clone(n.Annotations),
		Labels:          maps.Clone(n.Labels),
		UID:             string(n.UID),
		ResourceVersion: n.ResourceVersion,
		Created:         n.CreationTimestamp.Time,
	}
	switch {
	case len(n.Spec.PodCIDRs) > 0:
		r.PodCIDRs = slices.Clone(n.Spec.PodCIDRs)
	case n.Spec.PodCIDR != "":
		r.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			r.InternalIPs = append(r.InternalIPs, a.Address)
		}
	}
	return r
}
