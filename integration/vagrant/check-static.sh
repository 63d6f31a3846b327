#!/usr/bin/env bash
# check-static.sh — what CI can prove about the Vagrant suite without booting
# VMs: every script passes shellcheck, the Vagrantfile is valid Ruby, and
# `vagrant validate` accepts it (settings, provisioner paths). Missing tools
# are a failure, never a skip. Run by `go test ./integration/vagrant/`.
#
# Debian packages: shellcheck ruby vagrant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
for tool in shellcheck ruby vagrant; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
	echo "check-static: missing ${missing[*]} (Debian: apt-get install shellcheck ruby vagrant)" >&2
	exit 1
fi

mapfile -t scripts < <(find "$here" -name '*.sh' -not -path '*/.build/*' -not -path '*/.vagrant/*' | sort)
if [[ ${#scripts[@]} -lt 6 ]]; then
	echo "check-static: found only ${#scripts[@]} scripts under $here" >&2
	exit 1
fi
shellcheck --external-sources "${scripts[@]}"
echo "check-static: shellcheck clean: ${scripts[*]#"$here/"}"

ruby -c "$here/Vagrantfile" >/dev/null
echo "check-static: ruby -c Vagrantfile: syntax OK"

# vagrant validate writes .vagrant/ next to the Vagrantfile and state under
# VAGRANT_HOME: give it a scratch copy so the checkout stays clean.
# --ignore-provider: neither VirtualBox nor vagrant-libvirt is installed in CI.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r "$here/Vagrantfile" "$here/provision" "$scratch/"
(
	cd "$scratch"
	VAGRANT_HOME="$scratch/.vagrant.d" VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_COLOR=1 \
		vagrant validate --ignore-provider
)
echo "check-static: vagrant validate: OK"
