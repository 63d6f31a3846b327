#!/usr/bin/env bash
# demo.sh BINDIR [--kubelet] — what `make demo` (and, with --kubelet, `make
# demo-kubelet`) runs as root: bring up a 3-node lab on a real kube-apiserver,
# print the pod ping matrix and the mesh, then tear the lab down again (also on
# Ctrl-C or failure). BINDIR must hold the wgmesh binaries (make build) and the
# tools (integration/tools/build.sh BINDIR). With --kubelet every node runs the
# real node stack (containerd + runc, kubelet, kube-proxy), wgmesh is installed
# with `kubectl apply -k deploy/overlays/lab`, and each node gets one agnhost pod.
set -euo pipefail

bin="${1:?usage: demo.sh BINDIR [--kubelet]}"
kubelet=false
[[ "${2:-}" == --kubelet ]] && kubelet=true
name=demo
$kubelet && name=demok
lab=("$bin/wgmesh-lab" --name "$name" --bin-dir "$bin")

if [[ $(id -u) -ne 0 ]]; then
	echo "demo: needs root (network and mount namespaces, cgroups): sudo make demo" >&2
	exit 1
fi

cleanup() {
	echo
	echo "==> tearing the lab down"
	"${lab[@]}" down
}
trap cleanup EXIT

if $kubelet; then
	echo "==> starting a kubelet lab: 3 nodes x 1 agnhost pod"
	"${lab[@]}" up --kubelet --nodes 3 --pods 1
	echo
	echo "==> nodes (registered by their kubelets, Ready once the wgmesh agent wrote the conflist)"
	"${lab[@]}" kubectl -- get nodes -o wide
	echo
	echo "==> pods (the wgmesh DaemonSet and the lab's agnhost pods)"
	"${lab[@]}" kubectl -- get pods -A -o wide
	echo
	echo "==> pod ping matrix"
	"${lab[@]}" ping-matrix
	exit 0
fi

echo "==> starting a lab: 3 nodes x 2 pods (kube-apiserver + etcd in an underlay namespace)"
"${lab[@]}" up --nodes 3 --pods 2
echo
"${lab[@]}" status
echo
echo "==> pod ping matrix (every pod to every pod, across nodes through WireGuard)"
"${lab[@]}" ping-matrix
echo
first="$("${lab[@]}" status -o tsv | head -n1 | cut -f1)"
if [[ -x "$bin/wgmeshctl" ]]; then
	echo "==> wgmeshctl show on $first"
	"${lab[@]}" exec "$first" -- "$bin/wgmeshctl" show || true
fi
echo "==> wg show on $first (stock wireguard-tools reading the agent's UAPI socket)"
"${lab[@]}" exec "$first" -- wg show
echo
echo "==> the Nodes as the apiserver sees them"
"${lab[@]}" kubectl -- get nodes -o custom-columns='NAME:.metadata.name,POD-CIDR:.spec.podCIDR,INTERNAL-IP:.status.addresses[0].address,PUBLIC-KEY:.metadata.annotations.wgmesh\.io/public-key'
echo
cat <<EOF
To keep a lab running: sudo make lab-up   (then e.g. sudo bin/wgmesh-lab --name lab status,
  sudo bin/wgmesh-lab exec node1 -- wg show, sudo bin/wgmesh-lab kubectl -- get nodes)
and remove it with:    sudo make lab-down
EOF
