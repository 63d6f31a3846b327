#!/usr/bin/env bash
# build.sh OUTDIR — build the lab's control-plane binaries (kube-apiserver,
# kubectl, etcd) from this tools module and put them in OUTDIR.
#
# The binaries are cached under $WGMESH_TOOLS_CACHE/<key>/ (default
# /var/cache/wgmesh/tools) where key = sha256(go.mod + go.sum + go version), so
# a cold build (~10+ minutes on 2 cores) happens once per tools-module change.
# OUTDIR receives hard links (or copies) of the cached binaries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUTDIR}"
cache_root="${WGMESH_TOOLS_CACHE:-/var/cache/wgmesh/tools}"

key="$( { cat "$here/go.mod" "$here/go.sum"; go version; } | sha256sum | cut -c1-16)"
cache="$cache_root/$key"
bins=(kube-apiserver kubectl etcd)

have_all() {
	local b
	for b in "${bins[@]}"; do [[ -x "$cache/$b" ]] || return 1; done
}

mkdir -p "$cache_root"
if ! have_all; then
	# Several test packages may ask for the tools at once: one builds, the
	# others wait here and then find the cache filled.
	exec 9>"$cache_root/.lock"
	if ! flock -n 9; then
		echo "tools: another build of the control-plane tools is running; waiting for it..."
		flock 9
	fi
fi

if have_all; then
	echo "tools: cached in $cache (key $key)"
else
	mkdir -p "$cache"
	# Build into a temp dir beside the cache and rename each binary into place,
	# so an interrupted build never leaves a half-written binary that looks cached.
	tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	cd "$here"
	export CGO_ENABLED=0
	declare -A pkg=(
		[etcd]=go.etcd.io/etcd/server/v3
		[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
		[kubectl]=k8s.io/kubernetes/cmd/kubectl
	)
	echo "tools: go mod download (first use fetches k8s.io/kubernetes and etcd modules)..."
	go mod download
	for b in etcd kube-apiserver kubectl; do
		[[ -x "$cache/$b" ]] && { echo "tools: $b cached"; continue; }
		echo "tools: building $b from ${pkg[$b]} (cold: several minutes; $(date +%T))..."
		start=$SECONDS
		# -v prints each package as it is compiled: that is the progress indicator.
		if ! go build -trimpath -ldflags='-s -w' -o "$tmp/$b" -v "${pkg[$b]}" 2>&1 |
			awk -v b="$b" '
				/ / { print; next }  # not a bare package path: an error or warning, show it
				{ n++; if (n % 100 == 0) { printf "tools:   %s: %d packages compiled (%s)\n", b, n, $0; fflush() } }'; then
			echo "tools: building $b failed" >&2
			exit 1
		fi
		mv -f "$tmp/$b" "$cache/$b"
		echo "tools: $b built in $((SECONDS - start))s"
	done
fi

mkdir -p "$out"
for b in "${bins[@]}"; do
	ln -f "$cache/$b" "$out/$b" 2>/dev/null || cp -f "$cache/$b" "$out/$b"
done
echo "tools: $(printf '%s ' "${bins[@]}")in $out"
