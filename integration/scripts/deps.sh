#!/usr/bin/env bash
# Installs what building and testing wgmesh needs on a Debian/Ubuntu box, as root.
# Idempotent and quiet when everything is already there, so `make test` can always call it.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
want() { have "$1" || need_pkgs+=("$2"); }

want ip iproute2
# tc (iproute2) with the kernel's netem: the chaos soak's underlay loss and jitter.
want tc iproute2
want ping iputils-ping
want nsenter util-linux
want wg wireguard-tools
want wireguard-go wireguard-go
want iperf3 iperf3
want tcpdump tcpdump
want nft nftables
want iptables iptables
want ethtool ethtool
# The real-node lab's OCI runtimes under containerd: runc (the default) and crun
# (1.8 rejects containerd 2.4's OCI spec version; see docs/real-node-lab.md).
want runc runc
want crun crun
# The lab's agnhost image carries these (the e2e suite execs sh, curl, nc -u and
# wget -T in it; busybox's wget segfaults on -T, so GNU wget).
want busybox busybox-static
want nc.openbsd netcat-openbsd
want wget wget
want gcc gcc
want git git
want make make
want curl curl
want shellcheck shellcheck
want ruby ruby
want vagrant vagrant

# Go: the project needs go >= 1.26 (go.mod). A go >= 1.21 fetches the exact toolchain
# from the module proxy by itself (GOTOOLCHAIN=auto), so only older or missing go needs apt.
go_ok() {
  local v
  v=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 21 ]
}
export PATH="/usr/local/go/bin:$PATH"
if ! go_ok; then need_pkgs+=(golang-go); fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need_pkgs[*]}; run as root (sudo) so they can be installed" >&2
    exit 1
  fi
  echo "deps: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! go_ok; then
  # Debian 12's golang-go is 1.19: take the newer one from backports.
  if grep -qs bookworm /etc/os-release; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/wgmesh-backports.list
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
    ln -sf /usr/lib/go-1.23/bin/go /usr/local/bin/go
  fi
fi
go_ok || { echo "deps: no usable Go toolchain (need >= 1.21 to bootstrap 1.26)" >&2; exit 1; }
