package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

func rawPeer(t *testing.T, i int) mesh.RawNode {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return mesh.RawNode{
		Name: fmt.Sprintf("n%d", i),
		Annotations: map[string]string{
			mesh.AnnotationPublicKey: k.PublicKey().String(),
			mesh.AnnotationEndpoint:  fmt.Sprintf("198.51.100.%d:51820", 10+i),
		},
		PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i)},
		Created:  time.Date(2025, 1, 1, 0, i, 0, 0, time.UTC),
	}
}

// TestDesiredStateMatchesAgent: what wgmeshctl computes from the Node list
// and the device is what the agent's reconciler wants on the same inputs:
// the same peers (with our own keepalive annotation applied), exclusions,
// degraded peers and local prefixes, and the device's peers keep their
// place in a conflict.
func TestDesiredStateMatchesAgent(t *testing.T) {
	ctx := context.Background()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	self := mesh.RawNode{Name: "n0", PodCIDRs: []string{"10.244.0.0/24"}, InternalIPs: []string{"198.51.100.10"},
		Annotations: map[string]string{mesh.AnnotationKeepalive: "15"}}
	n1, n2, n3 := rawPeer(t, 1), rawPeer(t, 2), rawPeer(t, 3)
	n2.Annotations[mesh.AnnotationEndpoint] = "wg2.example.org:51820" // neither side resolves it here
	n3.Annotations[mesh.AnnotationPublicKey] = "not-a-key"
	src := meshtest.NewSource("n0", self, n1, n2, n3)
	dev := meshtest.NewDevice("wgmesh0")
	if err := dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv}); err != nil {
		t.Fatal(err)
	}
	rec := mesh.New(mesh.Config{NodeName: "n0", PublicKey: priv.PublicKey(), ListenPort: 51820, MTU: 1420,
		Source: src, Device: dev, Dataplane: &meshtest.Dataplane{}})
	if err := rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	// A node older than n1 claims n1's pod CIDR: n1, on the device, stays.
	squatter := rawPeer(t, 9)
	squatter.PodCIDRs, squatter.Created = n1.PodCIDRs, n1.Created.Add(-time.Hour)
	src.Upsert(squatter)
	if err := rec.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}

	d, err := dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	raws, err := src.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	got, err := desiredState(apiQuery{nodeName: "n0", device: d, now: time.Now()}, raws, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := rec.Status()
	want := agentstate.FromStatus(agentstate.Info{Node: "n0", Interface: "wgmesh0", PublicKey: priv.PublicKey()}, st, nil)
	// The record of the agent's last pass is the agent's, not computed.
	ignore := cmpopts.IgnoreFields(agentstate.State{}, "LastReconcile", "Reconciles", "Synced")
	if diff := cmp.Diff(want, *got, ignore, cmpopts.IgnoreFields(agentstate.Peer{}, "Since")); diff != "" {
		t.Errorf("wgmeshctl's desired state (-agent +wgmeshctl):\n%s", diff)
	}
	// The comparison covers the cases it is meant to.
	if len(st.Peers) != 2 || st.Peers[0].Keepalive != 15*time.Second || len(st.Excluded) != 2 || len(st.Degraded) != 1 {
		t.Errorf("agent status lost the fixture's point: %+v", st)
	}
}

// TestDesiredStateExternalAndRelays: with --kubeconfig the Peers count as
// they do for the agents (a valid one is a peer "peer:NAME" with its
// allowed IPs, a refused one is excluded with its reason), and the pairs
// the agent relays (its state file) stay relayed: the far node's pod CIDR
// on the relay's peer, none on its own. Without the agent's state nothing
// is relayed.
func TestDesiredStateExternalAndRelays(t *testing.T) {
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	dev := meshtest.NewDevice("wgmesh0")
	if err := dev.ConfigureDevice(wgtypes.Config{PrivateKey: &priv}); err != nil {
		t.Fatal(err)
	}
	d, err := dev.Device()
	if err != nil {
		t.Fatal(err)
	}
	self := mesh.RawNode{Name: "n0", PodCIDRs: []string{"10.244.0.0/24"}, InternalIPs: []string{"198.51.100.10"}}
	raws := []mesh.RawNode{self, rawPeer(t, 1), rawPeer(t, 2), rawPeer(t, 3)}
	laptopKey, thiefKey := mustKey(t), mustKey(t)
	peers := []mesh.RawExternalPeer{
		{Name: "laptop", PublicKey: laptopKey.String(), AllowedIPs: []string{"203.0.113.250/32"}},
		{Name: "thief", PublicKey: thiefKey.String(), AllowedIPs: []string{"10.244.1.0/24"}},
	}
	prev := &agentstate.State{Node: "n0", Peers: []agentstate.Peer{{Node: "n2", RelayedVia: "n1"}}}

	type row struct{ Node, AllowedIPs, Via string }
	rows := func(s *agentstate.State) []row {
		var out []row
		for _, p := range s.Peers {
			out = append(out, row{p.Node, fmt.Sprint(p.AllowedIPs), p.RelayedVia})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		prev *agentstate.State
		want []row
	}{
		{"agent relays n2 via n1", prev, []row{
			{"n1", "[10.244.1.0/24 10.244.2.0/24]", ""}, {"n2", "[]", "n1"}, {"n3", "[10.244.3.0/24]", ""},
			{"peer:laptop", "[203.0.113.250/32]", ""},
		}},
		{"no agent state", nil, []row{
			{"n1", "[10.244.1.0/24]", ""}, {"n2", "[10.244.2.0/24]", ""}, {"n3", "[10.244.3.0/24]", ""},
			{"peer:laptop", "[203.0.113.250/32]", ""},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := desiredState(apiQuery{nodeName: "n0", device: d, prev: tc.prev, now: time.Now()}, raws, peers)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, rows(got)); diff != "" {
				t.Errorf("peers (-want +got):\n%s", diff)
			}
			var excluded []string
			for _, e := range got.Excluded {
				excluded = append(excluded, e.Node+":"+e.Reason)
			}
			if diff := cmp.Diff([]string{"peer:thief:overlaps-pod-cidr"}, excluded); diff != "" {
				t.Errorf("excluded (-want +got):\n%s", diff)
			}
		})
	}
}

func mustKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}
