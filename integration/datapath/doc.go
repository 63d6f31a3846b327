// Package datapath holds the root-only suites that run real agents
// (mesh/agent: wireguard-go device, dataplane, reconciler) in network
// namespaces, without a kube-apiserver. Most run nodes over a veth
// underlay fed by a file-backed node source
// (integration/internal/filesource); two topologies share one agent role
// (node_test.go):
//
//   - cluster (cluster_test.go): nodes with pod namespaces on a hostile
//     host (FORWARD policy DROP); the two-node data path, the dataplane on
//     the real kernel, fail-closed, restarts under a TCP stream, MTU and
//     MSS clamping.
//   - topo (topo_test.go): public and NAT'd nodes with their own
//     /etc/hosts; key rotation (and how long the mesh loses the rotating
//     node), a node behind a masquerading NAT with keepalive, roamed
//     endpoints that resyncs do not overwrite, endpoint-override names
//     re-resolved by the real resolver, and private keys absent from every
//     log line.
//
// TestPrivateKeyNeverLeaves runs one agent alone in a namespace over a
// fake API server (client-go's fake clientset) and searches everything it
// leaves behind for its private keys; TestDataplaneOnRealKernel runs the
// dataplane alone.
//
// Run as root:
//
//	go test ./integration/datapath/ -v
package datapath
