#!/usr/bin/env python3
"""The many-sources benchmark (issue 17, part 5): what a mount of many archives and
layouts costs while nothing changes, and how soon a change to one of them shows.
Not a test: nothing fails on time.

usage: mount-tests/bench/many-sources.py [--tiny] [--bin BIN] [--sources 50]
       [--idle 60] [WORKDIR]

Input: SOURCES - 1 copies of the fixtures' docker-archive and one copy of their OCI
layout, in one directory, all mounted at once.
Figures: the daemon's CPU (utime + stime from /proc/PID/stat) over IDLE seconds in
which nothing changes, as a share of one core; then the time until a tag shows, for
an archive saved over by rename (podman save + mv) and for a layout that skopeo
writes a tag into.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from daemon_cpu import cpu_seconds  # noqa: E402


def until(path, limit=30):
    t0 = time.monotonic()
    while not os.path.exists(path) and time.monotonic() - t0 < limit:
        time.sleep(0.005)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagefs"))
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("work", nargs="?", default=os.path.join(ROOT, "target/bench-many"))
    a = ap.parse_args()
    if a.tiny:
        a.sources, a.idle = 5, 3
    fixtures = os.path.join(ROOT, "target/tmp/fixtures")
    if not os.path.exists(f"{fixtures}/sample.tar"):
        sys.exit("no fixtures: run the mount tests first (mount-tests/run)")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    specs = []
    for i in range(a.sources - 1):
        shutil.copy(f"{fixtures}/sample.tar", f"{a.work}/a{i}.tar")
        specs.append(f"a{i}={a.work}/a{i}.tar")
    shutil.copytree(f"{fixtures}/layout", f"{a.work}/layout")
    specs.append(f"layout={a.work}/layout")
    mp = tempfile.mkdtemp(prefix="ifs-many-mnt")
    log = open(f"{a.work}/imagefs.log", "w")
    proc = subprocess.Popen([a.bin, "-f", "-o", "nokeep", *specs, mp],
                            stdout=subprocess.DEVNULL, stderr=log,
                            env=dict(os.environ, RUST_LOG="imagefs=debug"))
    store = tempfile.mkdtemp(prefix="ifs-many-pm")
    try:
        if until(f"{mp}/layout/by-tag") > 29:
            sys.exit("the mount did not come up")
        time.sleep(2)
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(a.idle)
        idle = (cpu_seconds(proc.pid) - cpu0) / a.idle * 100
        pm = ["podman", "--root", f"{store}/root", "--runroot", f"{store}/run",
              "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        victim = f"{a.work}/a{(a.sources - 1) // 2}.tar"
        subprocess.run(pm + ["load", "-q", "-i", victim], check=True, capture_output=True)
        subprocess.run(pm + ["tag", "localhost/whoami/api:latest", "localhost/whoami/api:bench"],
                       check=True, capture_output=True)
        subprocess.run(pm + ["save", "-q", "-m", "-o", victim + ".new", "localhost/whoami/api:bench"],
                       check=True, capture_output=True)
        name = os.path.basename(victim)[:-4]
        os.rename(victim + ".new", victim)
        archive_shows = until(f"{mp}/{name}/by-tag/localhost/whoami/api:bench")
        subprocess.run(["skopeo", "copy", "-q", f"oci:{a.work}/layout:localhost/whoami/web:latest",
                        f"oci:{a.work}/layout:localhost/whoami/web:bench"], check=True)
        layout_shows = until(f"{mp}/layout/by-tag/localhost/whoami/web:bench")
    finally:
        subprocess.run(["umount", mp], capture_output=True)
        proc.wait()
        log.close()
        shutil.rmtree(store, ignore_errors=True)
    watched = [l for l in open(f"{a.work}/imagefs.log") if "stores watched by inotify" in l]
    print(f"# {a.sources} sources in one mount, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    print(f"inotify: {watched[0].split('inotify', 1)[1].strip() if watched else 'not used'}")
    print("| what | figure |")
    print("|---|---|")
    print(f"| idle CPU over {a.idle:g} s (share of one core) | {idle:.3f}% |")
    print(f"| an archive saved over by rename: the tag shows after | {archive_shows:.2f} s |")
    print(f"| a layout skopeo writes a tag into: the tag shows after | {layout_shows:.2f} s |")
    print(f"targets (issue 17, part 5): idle CPU under 0.1%: {'met' if idle < 0.1 else 'NOT met'}; "
          f"a change shows within 1 s: {'met' if max(archive_shows, layout_shows) <= 1 else 'NOT met'}")
    shutil.rmtree(mp, ignore_errors=True)


if __name__ == "__main__":
    main()
