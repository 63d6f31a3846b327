// Package hardening holds root-only tests of wgmesh's hardening promises on
// real agents (mesh/agent: wireguard-go device, dataplane) in network
// namespaces, with a file-backed node source
// (integration/internal/filesource) in place of the apiserver:
// key rotation (and how long the mesh loses the rotating node), a node
// behind a masquerading NAT with keepalive, roamed endpoints that resyncs
// do not overwrite, endpoint-override names re-resolved by the real
// resolver, and private keys absent from every log line. Run as root:
//
//	go test ./integration/hardening/ -v
package hardening
