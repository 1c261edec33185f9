#!/usr/bin/env bash
# Builds the mount tests' fixtures with the real tools, offline: buildah makes images
# from scratch in a private vfs store, podman and skopeo export them in every format
# imagefs reads. Hand-built variants (for what the tools will not make) are derived
# from those exports by the tests themselves.
#
# usage: make-fixtures.sh OUTDIR
# Writes OUTDIR/{sample.tar,sample.tar.gz,sample.tar.zst,layout/,multi/,api.oci.tar,
# podman-images.json,ids.env} and leaves the store in OUTDIR/store (removed on success
# unless KEEP_STORE=1).
set -euo pipefail

out=${1:?usage: make-fixtures.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
store="$out/store"
rm -rf "$store" "$out/layout" "$out/multi" "$out/cs" "$out"/*.tar*
mkdir -p "$store/root" "$store/run" "$store/tmp"

export BUILDAH_ISOLATION=chroot
export TMPDIR="$store/tmp"
# A private storage.conf keeps the host's /etc/containers settings (and any running
# podman) out of the fixtures.
cat >"$store/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$store/root"
runroot = "$store/run"
CONF
export CONTAINERS_STORAGE_CONF="$store/storage.conf"
# No registries are consulted: every name used here is fully qualified or local.
cat >"$store/registries.conf" <<CONF
unqualified-search-registries = []
CONF
export CONTAINERS_REGISTRIES_CONF="$store/registries.conf"

S=(--root "$store/root" --runroot "$store/run" --storage-driver vfs)
bh() { buildah "${S[@]}" "$@"; }
pm() { podman "${S[@]}" --cgroup-manager cgroupfs --events-backend none "$@"; }

# build NAME CONTENT [EXTRA...]: one image from scratch with a small tree, a symlink,
# and (from the second layer on) a whiteout of a file of the first layer.
build() {
  local name=$1 content=$2
  local ctr dir
  ctr=$(bh from scratch)
  dir=$(mktemp -d "$store/tmp/ctx.XXXXXX")
  mkdir -p "$dir/etc" "$dir/app"
  printf '%s\n' "$content" >"$dir/app/version"
  printf 'to be removed\n' >"$dir/app/old"
  ln -s version "$dir/app/current"
  bh copy "$ctr" "$dir" / >/dev/null
  bh config --created-by "imagefs fixture $name" --label "fixture=$name" --arch amd64 --os linux "$ctr"
  bh commit -q --format docker "$ctr" "$name" >/dev/null
  bh rm "$ctr" >/dev/null
  # second layer: a file of the first one removed in the mounted rootfs, so that the
  # layer carries a whiteout for it, and a new file
  ctr=$(bh from "$name")
  local mnt
  mnt=$(bh mount "$ctr")
  rm "$mnt/app/old"
  printf 'second layer of %s\n' "$content" >"$mnt/app/extra"
  bh umount "$ctr" >/dev/null
  bh commit -q --format docker "$ctr" "$name" >/dev/null
  bh rm "$ctr" >/dev/null
  rm -rf "$dir"
}

# The re-tag scenario: web v1, then web v2 under the same tag; v1 stays untagged.
build localhost/whoami/web:latest "web v1"
web_v1=$(pm image inspect --format 'sha256:{{.ID}}' localhost/whoami/web:latest)
sleep 1 # distinct created times
build localhost/whoami/web:latest "web v2"
web_v2=$(pm image inspect --format 'sha256:{{.ID}}' localhost/whoami/web:latest)
# An image with two tags.
build localhost/whoami/api:1.0 "api 1.0"
bh tag localhost/whoami/api:1.0 localhost/whoami/api:latest
api=$(pm image inspect --format 'sha256:{{.ID}}' localhost/whoami/api:1.0)
# An image known under several names (short docker.io names and a port registry).
build docker.io/library/busybox:latest "busybox"
bh tag docker.io/library/busybox:latest quay.io/app/tool:v1 localhost:5000/mirror/busybox:stable
busybox=$(pm image inspect --format 'sha256:{{.ID}}' docker.io/library/busybox:latest)
# A second platform of api, for the multi-platform OCI index.
ctr=$(bh from localhost/whoami/api:1.0)
bh config --arch arm64 --variant v8 --created-by "imagefs fixture api arm64" "$ctr"
bh commit -q --format oci "$ctr" localhost/whoami/api:arm64 >/dev/null
bh rm "$ctr" >/dev/null
api_arm64=$(pm image inspect --format 'sha256:{{.ID}}' localhost/whoami/api:arm64)

pm images --no-trunc --format json >"$out/podman-images.json"

# docker-archive, several images, the untagged one by ID (RepoTags empty).
pm save -q -m --format docker-archive -o "$out/sample.tar" \
  localhost/whoami/web:latest localhost/whoami/api:1.0 localhost/whoami/api:latest \
  docker.io/library/busybox:latest quay.io/app/tool:v1 localhost:5000/mirror/busybox:stable \
  "${web_v1#sha256:}"
gzip -k -f "$out/sample.tar"
zstd -q -f "$out/sample.tar" -o "$out/sample.tar.zst"

# OCI layout: full references and a bare tag, as skopeo writes them.
sk() { skopeo --tmpdir "$store/tmp" "$@"; }
CS="containers-storage:[vfs@$store/root+$store/run]"
sk copy -q "${CS}localhost/whoami/api:1.0" "oci:$out/layout:localhost/whoami/api:1.0"
sk copy -q "${CS}localhost/whoami/api:latest" "oci:$out/layout:localhost/whoami/api:latest"
sk copy -q "${CS}localhost/whoami/web:latest" "oci:$out/layout:localhost/whoami/web:latest"
sk copy -q "${CS}docker.io/library/busybox:latest" "oci:$out/layout:stable"

# oci-archive of one image.
sk copy -q "${CS}localhost/whoami/web:latest" "oci-archive:$out/web.oci.tar:localhost/whoami/web:latest"

# A multi-platform image: buildah pushes a manifest list as a nested index.
bh manifest create localhost/whoami/multi:latest >/dev/null
bh manifest add localhost/whoami/multi:latest "${CS}localhost/whoami/api:1.0" >/dev/null
bh manifest add localhost/whoami/multi:latest "${CS}localhost/whoami/api:arm64" >/dev/null
bh manifest push -q --all localhost/whoami/multi:latest "oci:$out/multi:localhost/whoami/multi:latest"

# A real Docker (pre-25) archive: dockerd loads the podman archive and saves it again.
# dockerd runs offline with its own roots and a socket under /tmp, and is stopped by
# its PID whatever happens.
dk=$(mktemp -d /tmp/ifs-dk.XXXXXX)
stop_dockerd() {
  local pid
  pid=$(cat "$dk/pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  umount -R "$store/docker" 2>/dev/null || true
  rm -rf "$dk"
}
trap stop_dockerd EXIT
dockerd --storage-driver vfs --iptables=false --ip6tables=false --ip-masq=false \
  --bridge=none --userland-proxy=false --data-root "$store/docker" \
  --exec-root "$dk/exec" --host "unix://$dk/sock" --pidfile "$dk/pid" >"$store/dockerd.log" 2>&1 &
export DOCKER_HOST="unix://$dk/sock"
for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
docker version >/dev/null || { cat "$store/dockerd.log" >&2; exit 1; }
docker load -q -i "$out/sample.tar" >/dev/null
docker tag docker.io/library/busybox:latest busybox:1.36
docker save -o "$out/docker.tar" localhost/whoami/web:latest localhost/whoami/api:1.0 \
  localhost/whoami/api:latest busybox:latest busybox:1.36 quay.io/app/tool:v1
docker images --no-trunc --format '{{json .}}' >"$out/docker-images.jsonl"
stop_dockerd
trap - EXIT
unset DOCKER_HOST

cat >"$out/ids.env" <<IDS
WEB_V1=$web_v1
WEB_V2=$web_v2
API=$api
API_ARM64=$api_arm64
BUSYBOX=$busybox
IDS

# The containers-storage store itself, for the containers-storage tests (podman's
# libpod database records the store's path: without it, podman works on a copy).
rm -rf "$out/cs"
cp -a "$store/root" "$out/cs"
rm -rf "$out/cs/libpod"

if [ "${KEEP_STORE:-0}" != 1 ]; then
  bh rm -a >/dev/null 2>&1 || true
  rm -rf "$store"
fi
echo "fixtures in $out"
