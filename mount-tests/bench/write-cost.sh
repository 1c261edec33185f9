#!/usr/bin/env bash
# Benchmark (not a test): what an untag and a tag cost on a docker-archive of at least
# 2 GB, through imagefs, beside what a user does without it: podman load + podman
# untag + podman save. Prints wall time and bytes written, measured in the same run.
#
# usage: mount-tests/bench/write-cost.sh [WORKDIR] [SIZE_MIB]   (default 2200 MiB)
# Needs root, /dev/fuse, buildah, podman; builds imagefs --release. Offline.
#
# Bytes written: for imagefs, the daemon's own write count (/proc/PID/io wchar) and
# the archive's growth; for both, the disk's sectors written (/sys/block, after sync),
# which counts what really reached the disk.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/var/tmp/imagefs-bench}
size_mib=${2:-2200}
mkdir -p "$work"; work=$(cd "$work" && pwd)
rm -rf "$work"/{store,load,mnt,*.tar}
mkdir -p "$work"/{store,load,mnt}
(cd "$here" && cargo build --release -q)
bin="$here/target/release/imagefs"

export BUILDAH_ISOLATION=chroot TMPDIR="$work/store"
S=(--root "$work/store/root" --runroot "$work/store/run" --storage-driver vfs)
pmflags() { echo "--root $1/root --runroot $1/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend none"; }

dev=$(basename "$(df --output=source "$work" | tail -1)")
[ -r "/sys/class/block/$dev/stat" ] || dev=""
sectors() { [ -n "$dev" ] && awk '{print $7}' "/sys/class/block/$dev/stat" || echo 0; }
disk_bytes() { echo $(( ($(sectors) - $1) * 512 )); }
now() { date +%s.%N; }
mib() { awk -v b="$1" 'BEGIN { if (b < 1048576) printf "%.1f KiB", b / 1024; else printf "%.1f MiB", b / 1048576 }'; }

echo "building a ${size_mib} MiB image with buildah (incompressible layer)..." >&2
head -c "$((size_mib << 20))" /dev/urandom >"$work/store/blob"
ctr=$(buildah "${S[@]}" from scratch)
buildah "${S[@]}" copy "$ctr" "$work/store/blob" /data >/dev/null
buildah "${S[@]}" commit -q --format docker "$ctr" localhost/bench/big:1 >/dev/null
buildah "${S[@]}" tag localhost/bench/big:1 localhost/bench/big:keep
rm -f "$work/store/blob"
podman $(pmflags "$work/store") save -q -m -o "$work/big.tar" localhost/bench/big:1 localhost/bench/big:keep
archive_size=$(stat -c %s "$work/big.tar")
buildah "${S[@]}" rm -a >/dev/null; buildah "${S[@]}" rmi -a -f >/dev/null 2>&1 || true

rows=()
row() { rows+=("$(printf '%-44s %10s %18s %18s' "$1" "$2" "$3" "$4")"); }

# --- imagefs: untag, then tag back
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
"$bin" -f "$work/big.tar" "$work/mnt" 2>"$work/imagefs.log" &
pid=$!
for _ in $(seq 200); do mountpoint -q "$work/mnt" && break; sleep 0.05; done
ls "$work/mnt/by-id" >/dev/null
id=$(ls "$work/mnt/by-id")
w0=$(awk '/^wchar/ {print $2}' /proc/$pid/io); sync; s0=$(sectors); t0=$(now)
rm "$work/mnt/by-tag/localhost/bench/big:1"
t1=$(now); sync; untag_disk=$(disk_bytes "$s0"); w1=$(awk '/^wchar/ {print $2}' /proc/$pid/io)
s1=$(sectors); t2=$(now)
ln "$work/mnt/by-id/$id" "$work/mnt/by-tag/localhost/bench/big:1"
t3=$(now); sync; tag_disk=$(disk_bytes "$s1"); w2=$(awk '/^wchar/ {print $2}' /proc/$pid/io)
kill "$pid"; wait "$pid" || true
growth=$(( $(stat -c %s "$work/big.tar") - archive_size ))
row "imagefs: rm by-tag/…/big:1 (untag)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f s", b-a}')" "$(mib $((w1 - w0)))" "$(mib "$untag_disk")"
row "imagefs: ln by-id/… by-tag/…/big:1 (tag)" "$(awk -v a="$t2" -v b="$t3" 'BEGIN{printf "%.3f s", b-a}')" "$(mib $((w2 - w1)))" "$(mib "$tag_disk")"

# --- podman: load, untag, save (the same untag, without imagefs)
pm="podman $(pmflags "$work/load")"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
s0=$(sectors); t0=$(now)
$pm load -q -i "$work/big.tar" >/dev/null
$pm untag localhost/bench/big:1 localhost/bench/big:1
$pm save -q -m -o "$work/out.tar" localhost/bench/big:keep
t1=$(now); sync; podman_disk=$(disk_bytes "$s0")
row "podman load + untag + save" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f s", b-a}')" "$(mib $(( $(du -sb "$work/load" | cut -f1) + $(stat -c %s "$work/out.tar") )))" "$(mib "$podman_disk")"

echo
echo "docker-archive of $(mib "$archive_size"), one ${size_mib} MiB layer, 2 tags; disk: ${dev:-unknown}"
printf '%-44s %10s %18s %18s\n' "operation" "wall" "bytes written" "disk written"
printf '%s\n' "${rows[@]}"
echo "(imagefs 'bytes written' is the daemon's wchar; podman's is its store plus the new archive;"
echo " 'disk written' is the device's sectors written across a sync; archive growth by imagefs: $(mib "$growth"))"
"$bin" --version >/dev/null
rm -rf "$work"/{store,load,mnt,out.tar}
