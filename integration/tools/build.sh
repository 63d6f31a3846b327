#!/usr/bin/env bash
# build.sh OUTDIR — build the lab's Kubernetes and container-runtime binaries
# from this tools module (and ./runtime) and put them in OUTDIR:
#   control plane: kube-apiserver, kubectl, etcd
#   node stack:    kubelet, kube-proxy, kube-controller-manager, kube-scheduler
#   upstream e2e:  e2e.test, agnhost (k8s.io/kubernetes/test/...), and the
#                  ginkgo CLI (github.com/onsi/ginkgo/v2 at the version
#                  k8s.io/kubernetes requires) to run e2e.test in parallel
#   runtime:       containerd, containerd-shim-runc-v2, ctr (containerd/v2),
#                  loopback, portmap (containernetworking/plugins),
#                  ocibuild (ours: writes the lab's images without a registry)
#
# The binaries are cached under $WGMESH_TOOLS_CACHE/<key>/ (default
# /var/cache/wgmesh/tools) where key = sha256(both modules' go.mod + go.sum + go
# version + this script), so a cold build happens once per tools-module change. Each build
# step appends its wall time to <key>/build-times.log. Cold on this 2-core box
# (empty Go build cache): see docs/real-node-lab.md.
# OUTDIR receives hard links (or copies) of the cached binaries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: build.sh OUTDIR}"
cache_root="${WGMESH_TOOLS_CACHE:-/var/cache/wgmesh/tools}"

# build.sh itself is part of the key: a change of flags or binaries rebuilds.
key="$( { cat "$here/go.mod" "$here/go.sum" "$here/runtime/go.mod" "$here/runtime/go.sum" "$here/build.sh" "$here"/runtime/ocibuild/*.go; go version; } | sha256sum | cut -c1-16)"
cache="$cache_root/$key"

# binary -> package, per module. kube bins are one `go build` so the shared
# packages compile once.
declare -A kube=(
	[etcd]=go.etcd.io/etcd/server/v3
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
	[kubelet]=k8s.io/kubernetes/cmd/kubelet
	[kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
	[agnhost]=k8s.io/kubernetes/test/images/agnhost
	[ginkgo]=github.com/onsi/ginkgo/v2/ginkgo
)
declare -A runtime=(
	[containerd]=github.com/containerd/containerd/v2/cmd/containerd
	[containerd-shim-runc-v2]=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	[ctr]=github.com/containerd/containerd/v2/cmd/ctr
	[loopback]=github.com/containernetworking/plugins/plugins/main/loopback
	[portmap]=github.com/containernetworking/plugins/plugins/meta/portmap
	[ocibuild]=github.com/wgmesh/wgmesh/integration/tools/runtime/ocibuild
)
bins=("${!kube[@]}" e2e.test "${!runtime[@]}")

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
		echo "tools: another build of the tools is running; waiting for it..."
		flock 9
	fi
fi

# progress prints every 100th compiled package (go build -v lists each) and
# any line that is not a bare package path (an error or warning).
progress() {
	awk -v b="$1" '
		/ / { print; next }
		{ n++; if (n % 100 == 0) { printf "tools:   %s: %d packages compiled (%s)\n", b, n, $0; fflush() } }'
}

# logtime STEP SECONDS: one line per build step in the cache dir, with the load
# so a slow figure on a busy box can be told from a cold one.
logtime() {
	printf '%s %s %ss load=%s cores=%s %s\n' "$(date -u +%FT%TZ)" "$1" "$2" \
		"$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" "$(go env GOVERSION)" >>"$cache/build-times.log"
	echo "tools: $1 built in $2s"
}

# build_group DIR NAME ASSOC: go build every missing binary of the assoc array
# named ASSOC (binary -> package) from the module in DIR into the cache.
build_group() {
	local dir="$1" name="$2"
	local -n group="$3"
	local ldflags="-s -w ${4:-}"
	local b missing=() pkgs=()
	for b in "${!group[@]}"; do
		[[ -x "$cache/$b" ]] || { missing+=("$b"); pkgs+=("${group[$b]}"); }
	done
	[[ ${#missing[@]} -gt 0 ]] || return 0
	echo "tools: building ${missing[*]} ($name; $(date +%T))..."
	local start=$SECONDS d
	d="$(mktemp -d "$tmp/$name-XXXXXX")"
	if ! (cd "$dir" && go build -trimpath -ldflags="$ldflags" -o "$d/" -v "${pkgs[@]}" 2>&1 | progress "$name"; exit "${PIPESTATUS[0]}"); then
		echo "tools: building $name failed" >&2
		exit 1
	fi
	for b in "${missing[@]}"; do
		# go build -o DIR/ names each binary after its package's last element,
		# or the one before it when that is a major version (etcd/server/v3).
		local base="${group[$b]##*/}"
		[[ "$base" =~ ^v[0-9]+$ ]] && { base="${group[$b]%/*}"; base="${base##*/}"; }
		local src="$d/$base"
		mv -f "$src" "$cache/$b"
	done
	logtime "${missing[*]}" $((SECONDS - start))
}

if have_all; then
	echo "tools: cached in $cache (key $key)"
else
	mkdir -p "$cache"
	# Build into a temp dir beside the cache and rename each binary into place,
	# so an interrupted build never leaves a half-written binary that looks cached.
	tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	export CGO_ENABLED=0
	echo "tools: go mod download (first use fetches k8s.io/kubernetes, etcd, containerd and CNI plugin modules)..."
	(cd "$here" && go mod download)
	(cd "$here/runtime" && go mod download)
	# Kubernetes binaries built outside its repository report v0.0.0-master;
	# stamp the module's version so kubelet, the apiserver and e2e.test's
	# version checks see v1.37.x (as release builds do).
	kv="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
	kmaj="${kv#v}"; kmaj="${kmaj%%.*}"; kmin="${kv#v*.}"; kmin="${kmin%%.*}"
	kver=""
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		kver+=" -X $p.gitVersion=$kv -X $p.gitMajor=$kmaj -X $p.gitMinor=$kmin -X $p.gitTreeState=clean"
	done
	build_group "$here" kube kube "$kver"
	if [[ ! -x "$cache/e2e.test" ]]; then
		echo "tools: building e2e.test from k8s.io/kubernetes/test/e2e (cold: ~4 minutes; $(date +%T))..."
		start=$SECONDS
		if ! (cd "$here" && go test -c -tags=tools -trimpath -ldflags="-s -w $kver" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e); then
			echo "tools: building e2e.test failed" >&2
			exit 1
		fi
		mv -f "$tmp/e2e.test" "$cache/e2e.test"
		logtime e2e.test $((SECONDS - start))
	fi
	build_group "$here/runtime" runtime runtime
fi

mkdir -p "$out"
for b in "${bins[@]}"; do
	ln -f "$cache/$b" "$out/$b" 2>/dev/null || cp -f "$cache/$b" "$out/$b"
done
echo "tools: $(printf '%s ' "${bins[@]}")in $out"
