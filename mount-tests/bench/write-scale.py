#!/usr/bin/env python3
"""The write benchmark of issue 17, part 2: what a write through the mount costs as the
store grows, beside podman doing the same on the same store. Not a test: nothing fails
on time.

usage: mount-tests/bench/write-scale.py [--tiny] [--bin BIN] [--fixtures DIR]
       [--writes 40] [WORKDIR]

Inputs: containers-storage stores of 10 and 10,000 images (make-cs.py, from the
fixtures' buildah store), made afresh in WORKDIR.
For each: the mount (release build, -f, its kept catalogs in WORKDIR) takes WRITES
`ln by-id/… by-tag/…` and as many `rm` of what they made; the daemon's own log line
per write ("write done") splits its time into the store's write (images.json read,
edited, replaced and fsynced under images.lock: the format's cost) and imagefs's own
(everything else: the change token, the catalog, the tree, the inodes). Then a
`podman tag` made outside the mount is timed until its name shows in by-tag/. After
the unmount, `podman tag` and `podman untag` on the same store, for the user's way.
Last, the same writes on mem: stores of as many images, whose writes change memory
only: imagefs's own cost with no store format under it (no cache-cold tail after an
11 MB images.json was parsed and written).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from podman import podman_cmd  # noqa: E402


def until(path, limit=30):
    t0 = time.monotonic()
    while not os.path.lexists(path) and time.monotonic() - t0 < limit:
        time.sleep(0.002)
    return time.monotonic() - t0


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def mount(a, spec, tag):
    mp = tempfile.mkdtemp(prefix="ifs-ws-mnt")
    logp = f"{a.work}/imagefs-{tag}.log"
    env = dict(os.environ, RUST_LOG="imagefs=debug", XDG_CACHE_HOME=f"{a.work}/cache")
    proc = subprocess.Popen([a.bin, "-f", spec, mp],
                            stdout=subprocess.DEVNULL, stderr=open(logp, "w"), env=env)
    if until(f"{mp}/by-tag", 120) > 119:
        sys.exit(f"the mount of {spec} did not come up")
    return mp, proc, logp


def unmount(mp, proc):
    subprocess.run(["umount", mp], capture_output=True)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    os.rmdir(mp)


def writes_through(a, mp):
    """WRITES ln and as many rm through the mount: their wall times."""
    ids = sorted(os.listdir(f"{mp}/by-id"))
    os.makedirs(f"{mp}/by-tag/localhost/bench/w", exist_ok=True)
    lns, rms = [], []
    for i in range(a.writes):
        src = f"{mp}/by-id/{ids[(i * 7919) % len(ids)]}"
        t0 = time.perf_counter()
        os.link(src, f"{mp}/by-tag/localhost/bench/w:t{i}")
        lns.append(time.perf_counter() - t0)
    for i in range(a.writes):
        t0 = time.perf_counter()
        os.unlink(f"{mp}/by-tag/localhost/bench/w:t{i}")
        rms.append(time.perf_counter() - t0)
    return ids, lns, rms


def write_lines(a, logp):
    log = open(logp).read()
    writes = [(float(s), float(o), ap == "true") for s, o, ap in re.findall(
        r"write done.*?store_ms=([0-9.]+) own_ms=([0-9.]+).*?applied=(\w+)", log)]
    if len(writes) != 2 * a.writes:
        sys.exit(f"{logp}: {len(writes)} 'write done' lines for {2 * a.writes} writes")
    return writes


def summary(a, n, ids, lns, rms, logp):
    writes = write_lines(a, logp)
    return dict(n=n, images=len(ids), ln=med(lns), rm=med(rms),
                store_ms=med([s for s, _, _ in writes]), own_ms=med([o for _, o, _ in writes]),
                own_max=max(o for _, o, _ in writes),
                applied=sum(1 for _, _, ap in writes if ap), writes=len(writes))


def bench_cs(a, n):
    store = f"{a.work}/cs-{n}"
    subprocess.run([sys.executable, f"{HERE}/make-cs.py", f"{a.fixtures}/cs", store, str(n)],
                   check=True)
    mp, proc, logp = mount(a, f"containers-storage:{store}", f"cs-{n}")
    try:
        ids, lns, rms = writes_through(a, mp)
        # outside: podman tags while the mount is up
        pm = podman_cmd(store)
        outside = []
        for i in range(a.outside):
            target = f"{mp}/by-tag/localhost/bench/outside:o{i}"
            t0 = time.perf_counter()
            subprocess.run(pm + ["tag", ids[i].removeprefix("sha256:"),
                                 f"localhost/bench/outside:o{i}"], check=True,
                           capture_output=True)
            t1 = time.perf_counter()
            until(target)
            outside.append((t1 - t0, time.perf_counter() - t1))
        time.sleep(0.5)
    finally:
        unmount(mp, proc)
    res = summary(a, n, ids, lns, rms, logp)
    reloads = [float(x) for x in re.findall(r"reload_ms=([0-9.]+)", open(logp).read())]
    res.update(outside_cmd=med([c for c, _ in outside]), outside_shows=med([s for _, s in outside]),
               reload_ms=med(reloads) if reloads else None)
    # the user's way, on the same store: podman tag and untag
    tags, untags = [], []
    for i in range(a.podman):
        t0 = time.perf_counter()
        subprocess.run(pm + ["tag", ids[i].removeprefix("sha256:"), f"localhost/bench/p:p{i}"],
                       check=True, capture_output=True)
        tags.append(time.perf_counter() - t0)
    for i in range(a.podman):
        t0 = time.perf_counter()
        subprocess.run(pm + ["untag", ids[i].removeprefix("sha256:"), f"localhost/bench/p:p{i}"],
                       check=True, capture_output=True)
        untags.append(time.perf_counter() - t0)
    res.update(podman_tag=med(tags), podman_untag=med(untags))
    shutil.rmtree(f"{store}.run", ignore_errors=True)
    return res


def bench_mem(a, n):
    """The same writes on a mem: store of N images, whose write changes memory only:
    imagefs's own cost per write with no store format under it."""
    path = f"{a.work}/mem-{n}.json"
    images = []
    for i in range(n):
        tags = [] if i % 10 == 9 else [f"localhost/bench/app{i % 100}:v{i}"]
        images.append({"config": {"architecture": "amd64", "os": "linux",
                                  "created": "2024-04-01T00:00:00Z", "bench": i}, "tags": tags})
    with open(path, "w") as f:
        json.dump({"images": images}, f)
    mp, proc, logp = mount(a, f"mem:{path}", f"mem-{n}")
    try:
        ids, lns, rms = writes_through(a, mp)
    finally:
        unmount(mp, proc)
    return summary(a, n, ids, lns, rms, logp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagefs"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "target/tmp/fixtures"))
    ap.add_argument("--writes", type=int, default=40)
    ap.add_argument("--outside", type=int, default=5)
    ap.add_argument("--podman", type=int, default=5)
    ap.add_argument("work", nargs="?", default=os.path.join(ROOT, "target/bench-writes"))
    a = ap.parse_args()
    sizes = [10, 10000]
    if a.tiny:
        sizes, a.writes, a.outside, a.podman = [10, 200], 4, 1, 1
    if not os.path.isdir(f"{a.fixtures}/cs"):
        sys.exit(f"no fixtures in {a.fixtures}: run the mount tests first (mount-tests/run)")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    rows = [bench_cs(a, n) for n in sizes]
    mem_rows = [bench_mem(a, n) for n in sizes]
    ms = lambda s: f"{s * 1e3:.2f} ms"
    print()
    print("containers-storage (vfs): medians of %d ln and %d rm through the mount; "
          "%d podman tag/untag; %d outside tags" % (a.writes, a.writes, a.podman, a.outside))
    print(f"| {'images':>7} | {'ln wall':>10} | {'rm wall':>10} | {'store write':>11} | "
          f"{'imagefs own':>11} | {'own, worst':>10} | {'podman tag':>10} | {'podman untag':>12} | "
          f"{'ln / podman tag':>15} | {'outside tag shows after':>23} |")
    for r in rows:
        print(f"| {r['images']:>7} | {ms(r['ln']):>10} | {ms(r['rm']):>10} | "
              f"{r['store_ms']:>8.2f} ms | {r['own_ms']:>8.3f} ms | {r['own_max']:>7.3f} ms | "
              f"{ms(r['podman_tag']):>10} | {ms(r['podman_untag']):>12} | "
              f"{r['ln'] / r['podman_tag']:>14.2f}x | "
              f"{ms(r['outside_shows']):>13} (podman {ms(r['outside_cmd'])}) |")
    a0, a1 = rows[0], rows[-1]
    print(f"imagefs own time per write, {a1['images']} against {a0['images']} images: "
          f"{a1['own_ms'] / a0['own_ms']:.2f}x")
    for r in rows:
        print(f"{r['images']} images: {r['applied']} of {r['writes']} writes applied in place"
              + (f"; an outside change's reload took {r['reload_ms']:.2f} ms (median)"
                 if r["reload_ms"] is not None else ""))
    print()
    print("mem: store (the write changes memory only): imagefs's own work per write, "
          "no store format under it")
    print(f"| {'images':>7} | {'ln wall':>10} | {'rm wall':>10} | {'imagefs own':>11} | "
          f"{'own, worst':>10} | {'applied':>7} |")
    for r in mem_rows:
        print(f"| {r['images']:>7} | {ms(r['ln']):>10} | {ms(r['rm']):>10} | "
              f"{r['own_ms']:>8.3f} ms | {r['own_max']:>7.3f} ms | {r['applied']:>3}/{r['writes']:<3} |")
    m0, m1 = mem_rows[0], mem_rows[-1]
    print(f"mem: imagefs own time per write, {m1['images']} against {m0['images']} images: "
          f"{m1['own_ms'] / m0['own_ms']:.2f}x; ln wall {m1['ln'] / m0['ln']:.2f}x")
    print()
    print("targets (issue 17, part 2):")
    print(f"- imagefs's own time per write within 2x from {a0['images']} to {a1['images']} images: "
          f"containers-storage {a1['own_ms'] / a0['own_ms']:.1f}x "
          f"({a0['own_ms'] * 1e3:.0f} us to {a1['own_ms'] * 1e3:.0f} us), "
          f"mem {m1['own_ms'] / m0['own_ms']:.1f}x "
          f"({m0['own_ms'] * 1e3:.0f} us to {m1['own_ms'] * 1e3:.0f} us)")
    print(f"- ln on the {a1['images']}-image containers-storage store within 1.5x of podman tag: "
          f"{a1['ln'] / a1['podman_tag']:.2f}x")


if __name__ == "__main__":
    main()
