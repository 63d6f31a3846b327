#!/usr/bin/env bash
# demo-kubelet.sh BINDIR — what `make demo-kubelet` runs (as root): a 3-node
# lab where every node runs the real node stack (containerd + runc, kubelet,
# kube-proxy), wgmesh installed with `kubectl apply -k deploy/overlays/lab`,
# one agnhost pod per node; prints nodes, pods and the ping matrix, then tears
# the lab down (also on Ctrl-C or failure). BINDIR must hold the wgmesh
# binaries (make build) and the tools (integration/tools/build.sh BINDIR).
set -euo pipefail

bin="${1:?usage: demo-kubelet.sh BINDIR}"
lab=("$bin/wgmesh-lab" --name demok --bin-dir "$bin")

if [[ $(id -u) -ne 0 ]]; then
	echo "demo-kubelet: needs root (network and mount namespaces, cgroups): sudo make demo-kubelet" >&2
	exit 1
fi

cleanup() {
	echo
	echo "==> tearing the lab down"
	"${lab[@]}" down
}
trap cleanup EXIT

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
