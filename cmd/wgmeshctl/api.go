package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

type apiQuery struct {
	kubeconfig string
	nodeName   string
	device     *wgtypes.Device
	prev       *agentstate.State // the agent's state file, or nil
	now        time.Time
	// warn reports a problem that leaves the answer usable (nil: none).
	warn func(string)
}

// desiredFromAPI lists the Nodes and runs the agent's own computation
// (mesh.Compute) on them, as the state this node should have. Endpoint DNS
// names are not resolved: such peers show as degraded without a desired
// endpoint.
func desiredFromAPI(ctx context.Context, q apiQuery) (*agentstate.State, error) {
	c, err := apiClient(q.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", q.kubeconfig, err)
	}
	list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	raws := make([]mesh.RawNode, 0, len(list.Items))
	for i := range list.Items {
		raws = append(raws, kube.RawNode(&list.Items[i]))
	}
	peers, err := externalPeersFromAPI(ctx, q.kubeconfig)
	if err != nil && q.warn != nil {
		// Reading Nodes may be all a kubeconfig allows: the nodes'
		// peers are still worth showing.
		q.warn(fmt.Sprintf("external peers left out: %v", err))
	}
	return desiredState(q, raws, peers)
}

// externalPeersFromAPI lists the Peer objects; none (and no error) where
// the Peer CRD is not installed, as for the agents.
func externalPeersFromAPI(ctx context.Context, kubeconfig string) ([]mesh.RawExternalPeer, error) {
	dyn, err := kube.NewDynamicClient(kube.ClientConfig{Kubeconfig: kubeconfig, DefaultRules: true, UserAgent: userAgent})
	if err != nil {
		return nil, err
	}
	list, err := dyn.Resource(kube.PeerGVR).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list peers: %w", err)
	}
	out := make([]mesh.RawExternalPeer, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, kube.RawExternalPeer(&list.Items[i]))
	}
	return out, nil
}

// desiredState runs the agent's reconcile computation on the listed Nodes
// and Peers, the same parse (mesh.ParseNodes, mesh.ParseExternalPeers),
// mesh.Compute and mesh.WithExternal, with the device's peers as the
// incumbents; a refused Peer is listed as excluded ("peer:NAME"). The
// agent's --keepalive default is not known here: peers without a
// keepalive annotation (theirs or ours) show none. Which pairs are
// relayed is decided by the agent from its device's handshakes, not from
// the API: the agent's latest decisions (its state file) are kept.
func desiredState(q apiQuery, raws []mesh.RawNode, peers []mesh.RawExternalPeer) (*agentstate.State, error) {
	self, err := selfNode(q, raws)
	if err != nil {
		return nil, err
	}
	nodes := mesh.ParseNodes(raws, self)
	me := nodes.Self(q.device.PublicKey)
	d := mesh.Compute(mesh.Input{
		Self:       me,
		Parsed:     &nodes,
		Configured: mesh.ConfiguredFrom(q.device),
	})
	ext, refused := mesh.ParseExternalPeers(peers, nodes)
	d = mesh.WithExternal(d, ext, 0)
	if q.prev != nil && q.prev.Node == self {
		via := map[string]string{}
		for _, p := range q.prev.Peers {
			if p.RelayedVia != "" {
				via[p.Node] = p.RelayedVia
			}
		}
		d = mesh.WithRelays(d, via)
	}
	excluded := slices.Clone(d.Excluded)
	for _, e := range refused {
		e.Node = mesh.ExternalPeerNode(e.Node)
		excluded = append(excluded, e)
	}
	slices.SortFunc(excluded, func(a, b mesh.Exclusion) int { return strings.Compare(a.Node, b.Node) })
	created := map[string]time.Time{}
	for _, n := range nodes.Nodes {
		created[n.Name] = n.Created
	}
	for _, e := range ext {
		created[mesh.ExternalPeerNode(e.Name)] = e.Created
	}
	st := mesh.Status{Synced: true, SelfFound: nodes.Own != nil, LocalPodCIDRs: me.PodCIDRs,
		Peers: d.Peers, Excluded: excluded, Degraded: d.Degraded}
	s := agentstate.FromStatus(agentstate.Info{Node: self, Interface: q.device.Name, PublicKey: q.device.PublicKey,
		ListenPort: q.device.ListenPort}, st, q.prev)
	// The agent's record of its last pass, if there is one, still tells
	// the operator how the agent is doing; without it there is none.
	s.LastReconcile, s.Synced = time.Time{}, false
	if q.prev != nil && q.prev.Node == self {
		s.LastReconcile, s.LastError, s.Synced = q.prev.LastReconcile, q.prev.LastError, q.prev.Synced
	}
	// A peer the agent has not recorded gets its Node's age as its
	// "wanted since", so the handshake window counts from the Node's
	// creation rather than from this command.
	known := map[[2]string]bool{}
	if q.prev != nil {
		for _, p := range q.prev.Peers {
			known[[2]string{p.Node, p.PublicKey}] = true
		}
	}
	for i, p := range s.Peers {
		if !known[[2]string{p.Node, p.PublicKey}] {
			s.Peers[i].Since = created[p.Node].UTC()
		}
	}
	return &s, nil
}

// selfNode names this node: --node-name, else the state file's node, else
// the Node whose published key is the device's.
func selfNode(q apiQuery, raws []mesh.RawNode) (string, error) {
	if q.nodeName != "" {
		return q.nodeName, nil
	}
	if q.prev != nil && q.prev.Node != "" {
		return q.prev.Node, nil
	}
	pub := q.device.PublicKey.String()
	var found []string
	for _, r := range raws {
		if r.Annotations[mesh.AnnotationPublicKey] == pub {
			found = append(found, r.Name)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", errors.New("cannot tell which Node this is (no Node publishes the device's public key and there is no agent state): pass --node-name")
	}
	return "", fmt.Errorf("nodes %v all publish the device's public key: pass --node-name", found)
}
