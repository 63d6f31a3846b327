package mesh_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/meshtest"
)

// peerSource is a meshtest.Source that also lists Peer objects and records
// the status reports.
type peerSource struct {
	*meshtest.Source
	mu      sync.Mutex
	peers   []mesh.RawExternalPeer
	reports []string
}

func (s *peerSource) ExternalPeers() ([]mesh.RawExternalPeer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]mesh.RawExternalPeer(nil), s.peers...), nil
}

func (s *peerSource) ReportPeer(_ context.Context, p mesh.RawExternalPeer, st mesh.PeerStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports = append(s.reports, p.Name+":"+st.Accepted+":"+st.Reason)
	// As the API server would: the status is on the object from now on.
	for i := range s.peers {
		if s.peers[i].Name == p.Name {
			s.peers[i].Status = st
		}
	}
	return nil
}

// TestReconcileExternalPeers: a valid Peer becomes a WireGuard peer with a
// route on every node; a Peer overlapping a node's pod CIDR is refused
// without touching anything else; only the reporting node (the smallest
// Node name) writes the status, and only when it changes.
func TestReconcileExternalPeers(t *testing.T) {
	laptop := mesh.RawExternalPeer{Name: "laptop", Generation: 1, PublicKey: key(50).String(), AllowedIPs: []string{"10.244.250.1/32"}}
	thief := mesh.RawExternalPeer{Name: "thief", Generation: 3, PublicKey: key(51).String(), AllowedIPs: []string{"10.244.1.0/25"}}
	for _, tc := range []struct {
		name    string
		self    string // n0 reports (smallest name); n9 does not
		reports []string
	}{
		{"reporting node", "n0", []string{"laptop:True:", "thief:False:overlaps-pod-cidr"}},
		{"other node", "n9", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self := selfNode()
			self.Name = tc.self
			src := &peerSource{Source: meshtest.NewSource(tc.self, self, node(1), node(2)), peers: []mesh.RawExternalPeer{laptop, thief}}
			f := newFixture(t, func(c *mesh.Config) { c.NodeName, c.Source = tc.self, src })
			f.reconcile(t)
			f.reconcile(t)

			got := f.peers(t)
			want := map[byte]string{
				1:  "198.51.100.11:51820 25s 10.244.1.0/24",
				2:  "198.51.100.12:51820 25s 10.244.2.0/24",
				50: "<nil> 25s 10.244.250.1/32",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("device (-want +got):\n%s", diff)
			}
			st, _ := f.dp.Last()
			if diff := cmp.Diff(pfx("10.244.1.0/24", "10.244.2.0/24", "10.244.250.1/32"), st.RemotePodCIDRs, cmpNet); diff != "" {
				t.Errorf("routes (-want +got):\n%s", diff)
			}
			s := f.r.Status()
			if len(s.RefusedPeers) != 1 || s.RefusedPeers[0].Node != "thief" || !strings.Contains(s.RefusedPeers[0].Err.Error(), `node "n1"`) {
				t.Errorf("refused peers %+v", s.RefusedPeers)
			}
			if diff := cmp.Diff(tc.reports, src.reports); diff != "" {
				t.Errorf("status reports over two passes (-want +got):\n%s", diff)
			}

			// The Peer goes away: so do its WireGuard peer and route.
			src.mu.Lock()
			src.peers = []mesh.RawExternalPeer{thief}
			src.mu.Unlock()
			f.reconcile(t)
			if _, ok := f.peers(t)[50]; ok {
				t.Error("deleted Peer still on the device")
			}
			if len(f.peers(t)) != 2 {
				t.Errorf("device after the Peer went: %v", f.peers(t))
			}
		})
	}
}
