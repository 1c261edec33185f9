#!/usr/bin/env python3
"""The busy-node benchmark (issue 17, part 1): what a containerd namespace of many
images costs the imagefs daemon while containerd commits things that touch no image,
and how soon a real image change shows. Not a test: nothing fails on time.

usage: mount-tests/bench/containerd-busy.py [--tiny] [--bin BIN] [--sizes 200,2000,20000]
       [--seconds 20] [--rate 5] [WORKDIR]

Input, made offline: a private containerd (native snapshotter, CRI off, its socket
under /tmp) whose k8s.io namespace holds N image records (one busybox image of the
fixtures imported with N names by `ctr images import --no-unpack`), for each size.

Load: `ctr leases create` at RATE a second for SECONDS: each is one bbolt commit that
touches no image. Then one real `ctr images tag`, timed until the tag's file shows.

Rows, for each size, in the same run:
  imagefs: the mount as it is, following containerd's image events;
  imagefs, txid: the same mount with containerd's socket out of its reach (a
    -o containerd_address= that does not exist), so that meta.db's txid is its change
    token, as before issue 17: every commit a rescan.
Figures: the daemon's CPU (utime + stime from /proc/PID/stat) per unrelated commit,
the rescans it logged during the load, and the time until the tag shows.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from daemon_cpu import cpu_seconds  # noqa: E402


class Containerd:
    def __init__(self, work):
        self.dir = tempfile.mkdtemp(prefix="ifs-bz", dir="/tmp")
        d = self.dir
        with open(f"{d}/config.toml", "w") as f:
            f.write(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{d}/sock"\n')
        self.log = open(f"{d}/log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", f"{d}/config.toml"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(200):
            if subprocess.run(self.ctr("default") + ["version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            sys.exit("containerd did not start")

    def ctr(self, ns):
        return ["ctr", "--address", f"{self.dir}/sock", "-n", ns]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["umount", "-R", f"{self.dir}/state"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def many_names(sample, n, out):
    """The fixtures' busybox image, alone, with n names."""
    with tarfile.open(sample) as src:
        entries = json.loads(src.extractfile("manifest.json").read())
        entry = next(e for e in entries if "docker.io/library/busybox:latest" in (e.get("RepoTags") or []))
        entry = dict(entry, RepoTags=[f"localhost/busy/n{i}:1" for i in range(n)])
        with tarfile.open(out, "w") as dst:
            # every member but manifest.json: the other images' are named by nothing
            for m in src.getmembers():
                if m.name in ("manifest.json", "repositories"):
                    continue
                data = src.extractfile(m).read() if m.isfile() else None
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
            data = json.dumps([entry]).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


def run(binary, c, address, n, seconds, rate, label):
    mp = tempfile.mkdtemp(prefix="ifs-bz-mnt")
    log_path = mp + ".log"
    env = dict(os.environ, RUST_LOG="imagefs=info", XDG_CACHE_HOME=mp + ".cache")
    log = open(log_path, "w")
    proc = subprocess.Popen([binary, "-f", "-o", f"containerd_address={address}",
                             f"containerd:{c.dir}/root#k8s.io", mp],
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    scans = lambda: open(log_path).read().count("store read")
    try:
        probe = f"{mp}/by-tag/localhost/busy/n0:1"
        for _ in range(600):
            if os.path.exists(probe):
                break
            time.sleep(0.05)
        else:
            sys.exit(f"{label}: the mount did not come up: {open(log_path).read()}")
        # settled: no rescan for 2 s (the subscription's own one included)
        while True:
            before = scans()
            time.sleep(2)
            if scans() == before:
                break
        scans_before, cpu_before = scans(), cpu_seconds(proc.pid)
        commits = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            subprocess.run(c.ctr("k8s.io") + ["leases", "create", "--id", f"{label}-{n}-{commits}"],
                           capture_output=True, check=True)
            commits += 1
            time.sleep(max(0.0, start + commits / rate - time.monotonic()))
        time.sleep(1)
        cpu = cpu_seconds(proc.pid) - cpu_before
        rescans = scans() - scans_before
        tag = f"localhost/busy/tagged-{label.replace(' ', '').replace(',', '')}:{n}"
        path = f"{mp}/by-tag/{tag}"
        t0 = time.monotonic()
        subprocess.run(c.ctr("k8s.io") + ["images", "tag", "localhost/busy/n0:1", tag],
                       capture_output=True, check=True)
        while not os.path.exists(path):
            if time.monotonic() - t0 > 30:
                break
            time.sleep(0.005)
        shows = time.monotonic() - t0
        return {"commits": commits, "cpu_ms_per_commit": cpu * 1000 / commits,
                "rescans": rescans, "tag_shows_s": shows}
    finally:
        subprocess.run(["umount", mp], capture_output=True)
        proc.wait()
        log.close()
        shutil.rmtree(mp, ignore_errors=True)
        shutil.rmtree(mp + ".cache", ignore_errors=True)
        os.unlink(log_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/imagefs"))
    ap.add_argument("--sizes", default="200,2000,20000")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=5)
    ap.add_argument("work", nargs="?", default=os.path.join(ROOT, "target/bench-containerd"))
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.tiny:
        sizes, a.seconds = [20], 3
    os.makedirs(a.work, exist_ok=True)
    sample = os.path.join(ROOT, "target/tmp/fixtures/sample.tar")
    if not os.path.exists(sample):
        sys.exit(f"no fixtures in {sample}: run the mount tests first (mount-tests/run)")
    rows = []
    for n in sizes:
        archive = os.path.join(a.work, f"busy-{n}.tar")
        if not os.path.exists(archive):
            many_names(sample, n, archive)
        c = Containerd(a.work)
        try:
            t0 = time.monotonic()
            subprocess.run(c.ctr("k8s.io") + ["images", "import", "--no-unpack", archive],
                           capture_output=True, check=True)
            names = len(subprocess.run(c.ctr("k8s.io") + ["images", "ls", "-q"], capture_output=True,
                                       text=True, check=True).stdout.split())
            print(f"{n} names: imported in {time.monotonic() - t0:.1f} s; ctr lists {names}", file=sys.stderr)
            for label, address in (("imagefs", f"{c.dir}/sock"),
                                   ("imagefs, txid", f"{c.dir}/no-such-socket")):
                r = run(a.bin, c, address, n, a.seconds, a.rate, label)
                rows.append((n, label, r))
        finally:
            c.stop()
    print(f"# containerd busy node ({a.rate:g} unrelated commits/s for {a.seconds:g} s), "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    print("| names | tool | commits | CPU per commit (ms) | rescans | real tag shows after (s) |")
    print("|---|---|---|---|---|---|")
    for n, label, r in rows:
        print(f"| {n} | {label} | {r['commits']} | {r['cpu_ms_per_commit']:.2f} | {r['rescans']} | {r['tag_shows_s']:.2f} |")
    ok_cpu = all(r["cpu_ms_per_commit"] <= 1.0 for _, l, r in rows if l == "imagefs")
    ok_tag = all(r["tag_shows_s"] <= 1.0 for _, l, r in rows if l == "imagefs")
    print(f"targets (issue 17, part 1): <= 1 ms CPU per unrelated commit: {'met' if ok_cpu else 'NOT met'}; "
          f"a real tag shows within 1 s: {'met' if ok_tag else 'NOT met'}")


if __name__ == "__main__":
    main()
