#!/usr/bin/env bash
# run.sh [all|up|deploy|check|down] — the multi-VM suite (`make vagrant-test`
# runs `all`). See README.md here for prerequisites.
#
#   up      build the image archive, boot and provision wg1..wg3 (k3s, no CNI)
#   deploy  import the image into each VM's containerd, apply
#           deploy/overlays/vagrant and wait for the agents
#   check   check.sh: pod ping matrix, leak capture on every VM NIC,
#           iperf3 pod<->pod, agent restart and rolling restart
#   down    destroy the VMs
#   all     up, deploy, check, then down (keep the VMs with WGMESH_VAGRANT_KEEP=1)
#
# Needs: vagrant with a provider (libvirt or virtualbox), go, ssh, GNU tar.
# The VMs download Debian packages and k3s, and the check pods' image, from
# the internet through the provider's NAT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$here/.build"
ssh_cfg="$build/ssh-config"
vms=(wg1 wg2 wg3)

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || {
			echo "run.sh: $c is required (see integration/vagrant/README.md)" >&2
			exit 1
		}
	done
}

vagrant_() { (cd "$here" && vagrant "$@"); }

vm() {
	local h="$1"
	shift
	ssh -F "$ssh_cfg" -o LogLevel=ERROR "$h" -- "$@"
}

up() {
	need vagrant go ssh tar sha256sum
	mkdir -p "$build"
	# A join token per lab, kept while the VMs live (re-provisioning needs it).
	if [[ ! -s "$build/k3s-token" ]]; then
		(umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$build/k3s-token")
	fi
	"$here/build-image.sh" "$build/wgmesh-image.tar" wgmesh:dev
	# The server first: the agents join it while provisioning.
	vagrant_ up --no-parallel
	vagrant_ ssh-config >"$ssh_cfg"
}

deploy() {
	need ssh tar
	[[ -s "$ssh_cfg" ]] || vagrant_ ssh-config >"$ssh_cfg"
	tar -C "$root" -cf "$build/deploy.tar" --exclude='*.go' --exclude='*_test.go' deploy
	local h
	for h in "${vms[@]}"; do
		echo "deploy: importing wgmesh:dev into $h"
		vm "$h" "cat >/tmp/wgmesh-image.tar" <"$build/wgmesh-image.tar"
		vm "$h" sudo k3s ctr -n k8s.io images import /tmp/wgmesh-image.tar
	done
	vm wg1 "rm -rf ~/wgmesh && mkdir -p ~/wgmesh && tar -C ~/wgmesh -xf -" <"$build/deploy.tar"
	local existed=0
	vm wg1 sudo k3s kubectl -n wgmesh-system get daemonset wgmesh-agent >/dev/null 2>&1 && existed=1
	vm wg1 'sudo k3s kubectl apply -k ~/wgmesh/deploy/overlays/vagrant'
	# Same tag, new content: the DaemonSet cannot see that, so roll it.
	if [[ $existed -eq 1 ]]; then
		vm wg1 sudo k3s kubectl -n wgmesh-system rollout restart daemonset/wgmesh-agent
	fi
	vm wg1 sudo k3s kubectl -n wgmesh-system rollout status daemonset/wgmesh-agent --timeout=300s
}

check() {
	[[ -s "$ssh_cfg" ]] || vagrant_ ssh-config >"$ssh_cfg"
	WGMESH_SSH_CONFIG="$ssh_cfg" WGMESH_BUILD_DIR="$build" "$here/check.sh"
}

down() {
	need vagrant
	vagrant_ destroy -f
	rm -f "$ssh_cfg" "$build/k3s-token"
}

case "${1:-all}" in
up) up ;;
deploy) deploy ;;
check) check ;;
down) down ;;
all)
	up
	rc=0
	# Separate processes: errexit is ignored inside functions run in a && list.
	"$0" deploy && "$0" check || rc=$?
	if [[ "${WGMESH_VAGRANT_KEEP:-0}" == 1 ]]; then
		echo "run.sh: VMs kept (WGMESH_VAGRANT_KEEP=1); remove them with: $0 down"
	else
		down
	fi
	exit "$rc"
	;;
*)
	echo "usage: $0 [all|up|deploy|check|down]" >&2
	exit 2
	;;
esac
