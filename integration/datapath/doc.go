// Package datapath holds the root-only test of wgmesh's node data path: two
// node network namespaces over a veth underlay, each running the real
// wireguard-go device, dataplane and mesh reconciler, fed by a file-backed
// node source instead of a kube-apiserver. Run as root:
//
//	go test ./integration/datapath/ -v
package datapath
