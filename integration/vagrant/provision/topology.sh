#!/usr/bin/env bash
# wgmesh-topology: this VM's routes and NAT rules in the Vagrant lab (see the
# Vagrantfile). Installed by common.sh as a oneshot systemd unit, so it is
# reapplied at boot before k3s. Settings come from /etc/default/wgmesh-topology:
# WGMESH_TOPOLOGY (plain | router | nated), WGMESH_UNDERLAY_CIDR,
# WGMESH_NATNET_CIDR, WGMESH_NAT_GATEWAY.
set -euo pipefail

topology="${WGMESH_TOPOLOGY:?}"
underlay="${WGMESH_UNDERLAY_CIDR:?}"
natnet="${WGMESH_NATNET_CIDR:?}"
gateway="${WGMESH_NAT_GATEWAY:?}"

# iface_in CIDR prints the interface holding an IPv4 address in the /24 CIDR
# (Vagrant numbers NICs in an order that differs between providers).
iface_in() {
	local prefix="${1%.*}."
	ip -o -4 addr show | awk -v p="$prefix" '{ split($4, a, "/") } index(a[1], p) == 1 { print $2; exit }'
}

case "$topology" in
plain)
	# No route to the NAT'd network: its node is reachable only through the
	# mappings its own packets open on the NAT.
	ip route replace unreachable "$natnet"
	;;
router)
	up="$(iface_in "$underlay")"
	if [[ -z "$up" ]]; then
		echo "wgmesh-topology: no interface in $underlay" >&2
		exit 1
	fi
	# Flush-and-load in one transaction: rerunning replaces, never duplicates.
	nft -f - <<NFT
table ip wgmesh-vagrant-nat
delete table ip wgmesh-vagrant-nat
table ip wgmesh-vagrant-nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		# Translated source ports stay out of 51820 and the kernel's ephemeral
		# range: wg2's own WireGuard socket (198.51.100.12:51820) must never
		# collide with a mapping of wg3's (203.0.113.13:51820), or whichever
		# flow comes second would be dropped as a conntrack clash.
		ip saddr $natnet oifname "$up" meta l4proto { tcp, udp } masquerade to :10000-19999
		ip saddr $natnet oifname "$up" masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		# A NAT, not a router: nothing from the underlay opens a flow inward.
		iifname "$up" ip daddr $natnet ct state new drop
	}
}
NFT
	;;
nated)
	ip route replace "$underlay" via "$gateway"
	;;
*)
	echo "wgmesh-topology: unknown topology $topology" >&2
	exit 1
	;;
esac
echo "wgmesh-topology: $topology applied"
