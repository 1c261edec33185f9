#!/usr/bin/env bash
# Benchmark (not a test), the first part of issue 7: how fast each tool answers
# "which images (ID, tags) are in this archive", measured in the same run, medians of
# 3 runs, with a cold page cache (drop_caches) and a warm one.
#
# usage: mount-tests/bench/list-images.sh [WORKDIR]
# Inputs made here, offline: (c) a docker-archive of 2,000 small images and 5,000
# tags (make-many.py, checked with skopeo inspect); any further archives named in
# BENCH_ARCHIVES (space-separated) are measured too.
# Tools: imagefs (mount -f, ls -l by-id, find by-tag, read every by-id file,
# unmount), GNU tar (extract manifest.json and *.json, sha256sum), ratarmount when
# installed (first mount, and mount with its index; read manifest.json and every
# config), and the physical limit (examples/header_walk: walk headers, seek over
# data, read and hash manifest.json and the configs).
# Figures: wall time, peak RSS, bytes read from disk (file system inputs x 512), and
# each tool's ratio to imagefs.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/var/tmp/imagefs-bench-list}
mkdir -p "$work"; work=$(cd "$work" && pwd)
(cd "$here" && cargo build --release -q && cargo build --release -q --example header_walk)
bin="$here/target/release/imagefs"
walk="$here/target/release/examples/header_walk"
python3 "$here/mount-tests/bench/make-many.py" "$work/many.tar" 2000 5000
skopeo inspect --config "docker-archive:$work/many.tar:localhost/bench/app5:v5" >/dev/null

cold_ok=1
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || cold_ok=0; }

# measure LABEL CMD: prints "wall rss_kb inputs" of one run (children included)
measure() { /usr/bin/time -f "%e %M %I" -o "$work/time.out" bash -c "$2" >/dev/null 2>&1 || true; cat "$work/time.out" | tail -1; }

median3() { sort -n | sed -n 2p; }

run_tool() { # NAME CMD → "cold_wall warm_wall rss_kb cold_read_bytes"
  local name=$1 cmd=$2 cw=() ww=() rss=() rd=()
  for _ in 1 2 3; do drop; read -r w r i < <(measure "$name" "$cmd"); cw+=("$w"); rd+=("$((i * 512))"); rss+=("$r"); done
  bash -c "$cmd" >/dev/null 2>&1 || true # warm up
  for _ in 1 2 3; do read -r w r i < <(measure "$name" "$cmd"); ww+=("$w"); rss+=("$r"); done
  echo "$(printf '%s\n' "${cw[@]}" | median3) $(printf '%s\n' "${ww[@]}" | median3) $(printf '%s\n' "${rss[@]}" | sort -n | tail -1) $(printf '%s\n' "${rd[@]}" | median3)"
}

imagefs_cmd() { # the whole user workflow, the daemon a child so its usage counts
  cat <<CMD
mp=\$(mktemp -d); "$bin" -f "$1" "\$mp" & pid=\$!
until mountpoint -q "\$mp"; do sleep 0.002; done
ls -l "\$mp/by-id" >/dev/null; find "\$mp/by-tag" >/dev/null; cat "\$mp"/by-id/* >/dev/null
umount "\$mp"; wait \$pid; rmdir "\$mp"
CMD
}

tar_cmd() { echo "d=\$(mktemp -d); tar -xf '$1' -C \"\$d\" --wildcards manifest.json '*.json'; sha256sum \"\$d\"/*.json >/dev/null; rm -rf \"\$d\""; }

ratar_cmd() { # $2: keep the index (second mount) or not (first mount)
  echo "mp=\$(mktemp -d); ${2:+}ratarmount -f '$1' \"\$mp\" & pid=\$!
until mountpoint -q \"\$mp\"; do sleep 0.01; done
cat \"\$mp/manifest.json\" >/dev/null; cat \"\$mp\"/*.json >/dev/null
fusermount3 -u \"\$mp\" 2>/dev/null || umount \"\$mp\"; wait \$pid; rmdir \"\$mp\""
}

report() { # INPUT
  local input=$1 rows=()
  local base; base=$(run_tool imagefs "$(imagefs_cmd "$input")")
  local bw; bw=$(echo "$base" | awk '{print $2}')
  row() { # NAME "cold warm rss read"
    read -r c w r b <<<"$2"
    rows+=("$(printf '%-34s %9s %9s %10s %12s %8s' "$1" "$c" "$w" "$((r / 1024)) MB" "$((b / 1024)) KiB" \
      "$(awk -v x="$w" -v y="$bw" 'BEGIN { printf (y > 0 ? "%.2fx" : "-"), x / y }')")")
  }
  row "imagefs (mount, ls, find, cat, umount)" "$base"
  row "header walk (physical limit)" "$(run_tool walk "'$walk' '$input'")"
  row "GNU tar extract + sha256sum" "$(run_tool tar "$(tar_cmd "$input")")"
  if command -v ratarmount >/dev/null; then
    rm -f "$input.index.sqlite" "$HOME/.ratarmount/"* 2>/dev/null || true
    row "ratarmount, first mount" "$(run_tool ratar1 "rm -f '$input.index.sqlite' ~/.ratarmount/* 2>/dev/null; $(ratar_cmd "$input")")"
    row "ratarmount, index built" "$(run_tool ratar2 "$(ratar_cmd "$input")")"
  fi
  echo
  echo "input: $input ($(( $(stat -c %s "$input") / 1048576 )) MiB)"
  printf '%-34s %9s %9s %10s %12s %8s\n' tool "cold s" "warm s" "peak RSS" "cold read" "÷imagefs"
  printf '%s\n' "${rows[@]}"
}

report "$work/many.tar"
for a in ${BENCH_ARCHIVES:-}; do report "$a"; done
[ "$cold_ok" = 1 ] || echo "(drop_caches was not permitted: the cold columns are warm)"
echo "(medians of 3; the ratio is warm wall time over imagefs's; imagefs runs with -f so that its daemon's usage is counted)"
