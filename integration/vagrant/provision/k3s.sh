#!/usr/bin/env bash
# Runs as root on every VM: installs k3s with no CNI of its own (wgmesh is
# the CNI), no network policy controller, and the project's pod range. The
# server allocates each node's podCIDR (a /24 of 10.244.0.0/16), as
# kube-controller-manager --allocate-node-cidrs does on any cluster.
#
# Env: WGMESH_ROLE (server | agent), WGMESH_NODE_IP, WGMESH_SERVER_IP,
# WGMESH_K3S_TOKEN, WGMESH_K3S_VERSION (empty = k3s' stable channel).
set -euo pipefail

role="${WGMESH_ROLE:?}"
node_ip="${WGMESH_NODE_IP:?}"
server_ip="${WGMESH_SERVER_IP:?}"
token="${WGMESH_K3S_TOKEN:-}"
if [[ -z "$token" ]]; then
	echo "k3s: no join token; bring the VMs up with integration/vagrant/run.sh (make vagrant-test)" >&2
	exit 1
fi

if systemctl is-active --quiet k3s.service || systemctl is-active --quiet k3s-agent.service; then
	echo "k3s: already running on $(hostname)"
	exit 0
fi

export INSTALL_K3S_VERSION="${WGMESH_K3S_VERSION:-}"
export K3S_TOKEN="$token"
installer="$(mktemp)"
trap 'rm -f "$installer"' EXIT
curl -sfL https://get.k3s.io -o "$installer"

case "$role" in
server)
	INSTALL_K3S_EXEC="server \
		--node-ip=$node_ip --advertise-address=$node_ip --tls-san=$node_ip \
		--flannel-backend=none --disable-network-policy \
		--cluster-cidr=10.244.0.0/16 --service-cidr=10.96.0.0/16 --cluster-dns=10.96.0.10 \
		--disable=traefik,servicelb,metrics-server,local-storage \
		--write-kubeconfig-mode=0644" sh "$installer"
	;;
agent)
	K3S_URL="https://$server_ip:6443" INSTALL_K3S_EXEC="agent --node-ip=$node_ip" sh "$installer"
	;;
*)
	echo "k3s: unknown role $role" >&2
	exit 1
	;;
esac

# wgmesh installs into the standard CNI directories; k3s' containerd uses
# them only when flannel is off. Say so loudly if a k3s release changes that.
cfg=/var/lib/rancher/k3s/agent/etc/containerd/config.toml
for i in $(seq 1 60); do
	[[ -s "$cfg" ]] && break
	[[ $i -eq 60 ]] && { echo "k3s: $cfg not written" >&2; exit 1; }
	sleep 2
done
if grep -Eq '^[[:space:]]*(bin_dirs?|conf_dir)[[:space:]]*=' "$cfg" &&
	! grep -Eq '^[[:space:]]*conf_dir[[:space:]]*=[[:space:]]*"/etc/cni/net.d"' "$cfg"; then
	echo "k3s: containerd does not use /etc/cni/net.d and /opt/cni/bin:" >&2
	grep -E 'bin_dirs?|conf_dir' "$cfg" >&2
	exit 1
fi
echo "k3s: $role up on $(hostname) ($node_ip)"
