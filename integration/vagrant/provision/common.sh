#!/usr/bin/env bash
# Runs as root on every VM before k3s: packages, kernel settings, and this
# VM's part of the NAT topology (provision/topology.sh, uploaded by the
# Vagrantfile to /tmp/wgmesh-topology).
#
# Env: WGMESH_TOPOLOGY (plain | router | nated), WGMESH_UNDERLAY_CIDR,
# WGMESH_NATNET_CIDR, WGMESH_NAT_GATEWAY.
set -euo pipefail

: "${WGMESH_TOPOLOGY:?}" "${WGMESH_UNDERLAY_CIDR:?}" "${WGMESH_NATNET_CIDR:?}" "${WGMESH_NAT_GATEWAY:?}"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# tcpdump: the leak check; wireguard-tools: `wg show` against the agent's
# UAPI socket; containernetworking-plugins: the loopback plugin every pod
# sandbox needs (k3s ships its own plugins only for flannel).
apt-get install -y -qq --no-install-recommends \
	ca-certificates curl tcpdump wireguard-tools nftables containernetworking-plugins jq >/dev/null

# With flannel off, k3s' containerd uses the standard CNI directories;
# wgmesh's init container adds /opt/cni/bin/wgmesh.
mkdir -p /opt/cni/bin /etc/cni/net.d
for p in loopback portmap; do
	ln -sf "/usr/lib/cni/$p" "/opt/cni/bin/$p"
done

# Forwarding must be on before the agent starts: the agent runs unprivileged
# and cannot write /proc/sys (see deploy/base/daemonset.yaml).
echo 'net.ipv4.ip_forward = 1' >/etc/sysctl.d/90-wgmesh.conf
sysctl -q --system

install -m 0755 /tmp/wgmesh-topology /usr/local/sbin/wgmesh-topology
cat >/etc/default/wgmesh-topology <<CONF
WGMESH_TOPOLOGY=$WGMESH_TOPOLOGY
WGMESH_UNDERLAY_CIDR=$WGMESH_UNDERLAY_CIDR
WGMESH_NATNET_CIDR=$WGMESH_NATNET_CIDR
WGMESH_NAT_GATEWAY=$WGMESH_NAT_GATEWAY
CONF
cat >/etc/systemd/system/wgmesh-topology.service <<'UNIT'
[Unit]
Description=wgmesh Vagrant lab topology (routes, NAT)
After=network-online.target
Wants=network-online.target
Before=k3s.service k3s-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
EnvironmentFile=/etc/default/wgmesh-topology
ExecStart=/usr/local/sbin/wgmesh-topology

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable wgmesh-topology.service
systemctl restart wgmesh-topology.service
echo "common: $(hostname) ready (topology $WGMESH_TOPOLOGY)"
