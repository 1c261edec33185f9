#!/usr/bin/env python3
"""The scale benchmark of issue 17, part 3: stores of 100,000 images and about 270,000
tags, mounted first with no kept catalog and then from the one the first mount kept,
beside the user's own listing tool on the same store. Not a test: nothing fails on time
or size.

usage: mount-tests/bench/scale.py [--tiny] [--bin BIN] [--fixtures DIR]
       [--images 100000] [--tags 3] [--limit 300] [WORKDIR]

Inputs, made afresh in WORKDIR: a containers-storage (vfs) store (make-cs.py, from the
fixtures' buildah store) and an OCI layout (make-layout.py), each of IMAGES images, nine
in ten of them named TAGS times; and the same at a tenth of the size, for the kept
mount's cost per 1,000 images.
For each store, two mounts (release build, -f, the default cache): the first reads the
store and keeps its catalog; the second reads the kept catalog. Each is timed until its
root lists, then `find by-id -links 1` (the untagged images) and `ls -l` of the biggest
repository directory are timed, and the daemon's peak and final RSS are read from
/proc/PID/status (after the first mount has kept its catalog). Beside them, in the
same run: `podman images` and `podman images --filter dangling=true` on the
containers-storage store, `umoci ls` on the layout (when umoci is installed), each
with its wall time and peak RSS, stopped after LIMIT seconds (podman images took 11 s
for 300 of these images).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from podman import podman_cmd  # noqa: E402


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def timed_rss(cmd, limit):
    """Runs cmd: its wall time, its peak RSS (KiB) and its stdout; killed after `limit`
    seconds (then its output is None)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(limit, p.kill)
    timer.start()
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    timer.cancel()
    wall = time.perf_counter() - t0
    if wall >= limit:
        return wall, usage.ru_maxrss, None
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)}: failed")
    return wall, usage.ru_maxrss, out


def biggest_repo(mp):
    """The by-tag/ directory with the most tags (a repository's tags are files named
    `<name>:<tag>` in the directory of its path)."""
    return max(((d, len(files)) for d, _, files in os.walk(f"{mp}/by-tag")),
               key=lambda x: x[1])[0]


def one_mount(a, spec, cache, log, keeps):
    """Mounts spec, waits for its root (and, when it `keeps` its catalog, for that),
    measures; returns a dict of figures."""
    mp = tempfile.mkdtemp(prefix="ifs-scale-mnt")
    env = dict(os.environ, RUST_LOG="imagefs=info", XDG_CACHE_HOME=cache)
    t0 = time.perf_counter()
    proc = subprocess.Popen([a.bin, "-f", spec, mp], stdout=subprocess.DEVNULL,
                            stderr=open(log, "a"), env=env)
    try:
        while not os.path.isdir(f"{mp}/by-id"):
            if proc.poll() is not None:
                sys.exit(f"the mount of {spec} exited: see {log}")
            if time.perf_counter() - t0 > 600:
                sys.exit(f"the mount of {spec} did not come up in 600 s")
            time.sleep(0.005)
        mounted = time.perf_counter() - t0
        # a first mount keeps its catalog once the mount is up: wait for it
        deadline = time.monotonic() + 120
        while (keeps and "catalog kept for the next mount" not in open(log).read()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        t1 = time.perf_counter()
        untagged = subprocess.run(["find", f"{mp}/by-id", "-links", "1"], check=True,
                                  capture_output=True, text=True).stdout.split()
        find_s = time.perf_counter() - t1
        repo = biggest_repo(mp)
        t2 = time.perf_counter()
        listed = subprocess.run(["ls", "-l", repo], check=True, capture_output=True,
                                text=True).stdout.splitlines()
        ls_s = time.perf_counter() - t2
        ids = len(os.listdir(f"{mp}/by-id"))
        peak, rss = status_kb(proc.pid, "VmHWM"), status_kb(proc.pid, "VmRSS")
    finally:
        subprocess.run(["umount", mp], capture_output=True)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.rmdir(mp)
    return dict(mount=mounted, find=find_s, untagged=len(untagged), ls=ls_s,
                ls_entries=len(listed) - 1, repo=os.path.basename(repo), ids=ids,
                peak=peak, rss=rss)


def bench_store(a, kind, n):
    store = f"{a.work}/{kind}-{n}"
    if kind == "cs":
        subprocess.run([sys.executable, f"{HERE}/make-cs.py", f"{a.fixtures}/cs", store, str(n),
                        str(a.tags)], check=True)
        spec = f"containers-storage:{store}"
    else:
        subprocess.run([sys.executable, f"{HERE}/make-layout.py", store, str(n), str(a.tags)],
                       check=True)
        spec = f"oci:{store}"
    cache = f"{a.work}/cache-{kind}-{n}"
    log = f"{a.work}/imagefs-{kind}-{n}.log"
    first = one_mount(a, spec, cache, log, keeps=True)
    kept = one_mount(a, spec, cache, log, keeps=False)
    if "store read from the catalog kept by an earlier mount" not in open(log).read():
        sys.exit(f"{log}: the second mount did not read the kept catalog")
    tools = {}
    if kind == "cs":
        pm = podman_cmd(store)
        tools["podman images"] = timed_rss(pm + ["images", "-q", "--no-trunc"], a.limit)
        tools["podman images --filter dangling=true"] = timed_rss(
            pm + ["images", "-q", "--no-trunc", "--filter", "dangling=true"], a.limit)
        shutil.rmtree(f"{store}.run", ignore_errors=True)
    elif shutil.which("umoci"):
        tools["umoci ls"] = timed_rss(["umoci", "ls", "--layout", store], a.limit)
    shutil.rmtree(store, ignore_errors=True)
    return dict(kind=kind, n=n, first=first, kept=kept, tools=tools)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagefs"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "target/tmp/fixtures"))
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--tags", type=int, default=3)
    ap.add_argument("--limit", type=float, default=300,
                    help="seconds a user's tool may take before it is stopped")
    ap.add_argument("work", nargs="?", default=os.path.join(ROOT, "target/bench-scale"))
    a = ap.parse_args()
    if a.tiny:
        a.images = 300
    if not os.path.isdir(f"{a.fixtures}/cs"):
        sys.exit(f"no fixtures in {a.fixtures}: run the mount tests first (mount-tests/run)")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    small = max(a.images // 10, 1)
    base = bench_store(a, "cs", 10)
    runs = [bench_store(a, kind, n) for kind in ("cs", "layout") for n in (small, a.images)]
    mib = lambda kb: f"{kb / 1024:.1f} MiB"
    print()
    print(f"imagefs {a.images:,} images, {a.tags} tags per named image (nine in ten); "
          f"the default cache; base: a 10-image mount peaks at {mib(base['kept']['peak'])}")
    print(f"| {'store':<18} | {'images':>7} | {'tags':>7} | {'mount':<5} | {'mount time':>10} | "
          f"{'peak RSS':>10} | {'RSS after':>10} | {'per image':>9} | {'find -links 1':>13} | "
          f"{'ls -l repo':>10} |")
    for r in runs:
        tags = sum(1 for _ in range(r["n"]) if _ % 10 != 9) * a.tags
        for which in ("first", "kept"):
            m = r[which]
            per = (m["peak"] - base["kept"]["peak"]) * 1024 / max(m["ids"], 1)
            print(f"| {r['kind']:<18} | {m['ids']:>7} | {tags:>7} | {which:<5} | "
                  f"{m['mount']:>8.2f} s | {mib(m['peak']):>10} | {mib(m['rss']):>10} | "
                  f"{per:>7.0f} B | {m['find']:>11.2f} s | {m['ls']:>8.3f} s |")
    print()
    print("the user's own tools on the same stores (wall time, peak RSS, lines):")
    for r in runs:
        for name, (wall, peak, out) in r["tools"].items():
            if out is None:
                print(f"  {r['kind']} {r['n']:>7}: {name}: not done in {a.limit} s "
                      f"(stopped; {mib(peak)} by then)")
            else:
                print(f"  {r['kind']} {r['n']:>7}: {name}: {wall:.2f} s, {mib(peak)}, "
                      f"{len(out.split())} lines")
    print()
    print("checks: untagged images (find -links 1) and the listed repository:")
    for r in runs:
        f, k = r["first"], r["kept"]
        print(f"  {r['kind']} {r['n']}: first {f['untagged']}, kept {k['untagged']}; "
              f"ls -l {f['repo']}: {f['ls_entries']} entries")
        if f["untagged"] != k["untagged"] or f["ids"] != k["ids"]:
            sys.exit("the kept-catalog mount shows another tree than the first mount")
    print()
    print("the kept-catalog mount, per 1,000 images (between the two sizes):")
    for kind in ("cs", "layout"):
        s, b = [r for r in runs if r["kind"] == kind]
        slope = (b["kept"]["mount"] - s["kept"]["mount"]) / max(b["n"] - s["n"], 1) * 1000
        print(f"  {kind}: {s['kept']['mount'] / s['n'] * 1e6:.2f} ms at {s['n']:,}, "
              f"{b['kept']['mount'] / b['n'] * 1e6:.2f} ms at {b['n']:,}; "
              f"{slope * 1e3:.2f} ms per 1,000 more")
    print()
    print("targets (issue 17, part 3): at most 1 KiB per image above the base (under "
          "100 MiB at 100,000); the kept-catalog mount linear")


if __name__ == "__main__":
    main()
