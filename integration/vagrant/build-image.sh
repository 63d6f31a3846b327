#!/usr/bin/env bash
# build-image.sh OUT.tar [TAG] — build the wgmesh image without Docker or a
# registry: the binaries listed in deploy/image-binaries.txt, built static with
# the host's Go exactly as deploy/Dockerfile builds them, packed as a
# one-layer image in the `docker save` archive format that
# `ctr images import` (and `docker load`) read. TAG defaults to wgmesh:dev,
# the name the manifests use.
#
# Why not the Dockerfile: the Vagrant suite must work where no Docker engine
# or registry exists; the image content is the same static files on an empty
# base, so an archive of them is the same image.
#
# Env: WGMESH_GOARCH overrides the target architecture (default: the host's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:?usage: build-image.sh OUT.tar [TAG]}"
tag="${2:-wgmesh:dev}"
arch="${WGMESH_GOARCH:-$(go env GOARCH)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/archive"

names=()
while read -r name pkg opt; do
	case "$name" in '' | '#'*) continue ;; esac
	if [[ "$opt" == optional && ! -d "$root/$pkg" ]]; then
		echo "build-image: skipping optional $name: $pkg does not exist yet"
		continue
	fi
	echo "build-image: $name <- $pkg ($arch)"
	(cd "$root" && CGO_ENABLED=0 GOOS=linux GOARCH="$arch" \
		go build -trimpath -ldflags='-s -w -buildid=' -o "$work/rootfs/$name" "$pkg")
	names+=("$name")
done <"$root/deploy/image-binaries.txt"
[[ ${#names[@]} -gt 0 ]] || {
	echo "build-image: deploy/image-binaries.txt lists nothing" >&2
	exit 1
}

# A reproducible layer: fixed owner, mode and time, sorted names.
chmod 0755 "$work/rootfs/"*
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
	-C "$work/rootfs" -cf "$work/layer.tar" "${names[@]}"
layer_sha="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
mkdir -p "$work/archive/$layer_sha"
mv "$work/layer.tar" "$work/archive/$layer_sha/layer.tar"

cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"0:0","Entrypoint":["/wgmesh-agent"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"integration/vagrant/build-image.sh"}]}
EOF
config_sha="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
mv "$work/config.json" "$work/archive/$config_sha.json"

# A tag is what follows the last ":" after the last "/" (a registry port is not one).
if [[ "${tag##*/}" == *:* ]]; then
	repo="${tag%:*}" version="${tag##*:}"
else
	repo="$tag" version=latest
fi
cat >"$work/archive/manifest.json" <<EOF
[{"Config":"$config_sha.json","RepoTags":["$repo:$version"],"Layers":["$layer_sha/layer.tar"]}]
EOF

mkdir -p "$(dirname "$out")"
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
	-C "$work/archive" -cf "$out.tmp" manifest.json "$config_sha.json" "$layer_sha/layer.tar"
mv -f "$out.tmp" "$out"
echo "build-image: $repo:$version -> $out (config sha256:$config_sha)"
