#!/usr/bin/env python3
"""The listing benchmark (issue 7): how fast each tool answers "which images (ID,
tags) are in here", every tool measured in the same run, beside imagefs. Not a test:
it asserts nothing about time (CI runs it with --tiny only to keep it working).

usage: mount-tests/bench/bench.py [--tiny] [--runs N] [--only a,b,c,d,e] [WORKDIR]

Inputs, made offline under WORKDIR (kept between runs, remade when their parameters
change), each checked with the real tool on a sample:
  (a) docker-archive, 20 images, 4 GiB of incompressible layers (make-big.py; skopeo)
  (b) the same, gzip -1 (gzip)
  (c) docker-archive, 2,000 small images and 5,000 tags (make-many.py; skopeo)
  (d) OCI layout with 10,000 index entries (make-layout.py; skopeo)
  (e) containers-storage (vfs) with 2,000 images, multiplied from a store buildah
      made (make-cs.py; podman images)
Tools: imagefs (mount -f, ls -l by-id, find by-tag, cat every by-id file, unmount;
once with the catalog a previous mount kept, once reading the store in full with
-o rescan; catalogs are kept under WORKDIR/cache),
the header walk (examples/header_walk: the physical limit; for (b) one zlib pass),
on (a) and (c) imagefs's commands on a tmpfs copy of its tree (no mount: the floor
of any mounted tool), and on (a), (c), (d), (e) the same workflow served from that
copy by a minimal in-memory FUSE server (examples/tree_server, handed the tree as
one snapshot file; imagefs's TTLs and kernel options: the floor of any FUSE tool),
GNU tar (extract manifest.json and *.json, sha256sum), `skopeo inspect --config` of
every image (a sample of 50, scaled, where there are more), ratarmount when installed
(first mount; mount with its index), `podman load` + `podman images` (on (a) only,
one run: it takes minutes), `podman images` on (e); for (c), (d), (e) the same tree
copied to tmpfs (`find by-id -links 1`, and on (c) `stat` of every by-tag entry;
there imagefs's time is mount + find, as the issue states it, the unmount apart).
Figures: wall time (median of N runs, cold page cache via drop_caches, then warm),
peak RSS of the largest process, bytes read from disk on a cold run (rusage
inblock x 512), for imagefs also the daemon's rchar (bytes it read through
syscalls), and each tool's ratio to imagefs (warm).
"""
import argparse
import hashlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def sh(cmd, **kw):
    return subprocess.run(["bash", "-c", cmd], check=True, **kw)


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        os.makedirs(self.work, exist_ok=True)
        self.cold_ok = True
        self.bin = args.bin
        self.walk = args.walk
        self.results = []  # (title, header lines, rows, notes)
        # imagefs keeps catalogs here, not in the user's ~/.cache
        os.environ["XDG_CACHE_HOME"] = f"{self.work}/cache"

    # -- measuring -----------------------------------------------------------------

    def drop(self):
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
        except OSError:
            self.cold_ok = False

    def once(self, cmd):
        """One run of a shell command: wall, peak RSS (KiB), disk bytes read, ok.
        GNU time reports the figures: a child forked from this Python would carry
        Python's own RSS into its peak (exec keeps the old memory's high-water mark)."""
        out = f"{self.work}/time.out"
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %I", "-o", out, "bash", "-c", cmd],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rss, inblock = (int(x) for x in open(out).read().split()[-2:])
        return {"wall": wall, "rss": rss, "disk": inblock * 512, "ok": p.returncode == 0}

    def server_once(self, tree, work, with_umount=True):
        """The same workflow served by the minimal in-memory FUSE server
        (examples/tree_server) from a finished tree, handed to it as one snapshot
        file (made from the tmpfs copy once, untimed): the floor of any FUSE tool."""
        snap = f"{tree}.snap"
        if not os.path.exists(snap):
            sh(f"'{self.args.server}' --snapshot '{tree}' '{snap}'")
        return self.imagefs_once(tree, work, with_umount=with_umount,
                                 argv=lambda mp: [self.args.server, snap, mp])

    def imagefs_once(self, source, work, opts=(), with_umount=True, argv=None):
        """The imagefs workflow, the daemon run with -f so that its own figures count:
        wall (up to the end of the work when not `with_umount`), and the fixed costs
        (mount ready, unmount) apart. `argv`: another FUSE server's command line,
        given the mount point."""
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.work)
        # The mount table says when it changes (POLLPRI): the harness notices the
        # mount at once, where sleeping between checks added up to its sleep.
        table = open("/proc/self/mountinfo")
        table.read()
        changed = select.poll()
        changed.register(table, select.POLLPRI | select.POLLERR)
        t0 = time.perf_counter()
        cmd = argv(mp) if argv else [self.bin, "-f", *opts, source, mp]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.ismount(mp):
            if p.poll() is not None:
                table.close()
                os.rmdir(mp)
                return {"wall": 0, "rss": 0, "disk": 0, "ok": False}
            changed.poll(50)
            table.seek(0)
            table.read()
        t1 = time.perf_counter()
        table.close()
        with open(f"/proc/{p.pid}/io") as f:
            rchar_mount = int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])
        w = subprocess.run(["bash", "-c", work.replace("$M", mp)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        t2 = time.perf_counter()
        with open(f"/proc/{p.pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        with open(f"/proc/{p.pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        subprocess.run(["umount", mp])
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        t3 = time.perf_counter()
        os.rmdir(mp)
        return {"wall": (t3 if with_umount else t2) - t0, "mount": t1 - t0, "work": t2 - t1, "umount": t3 - t2,
                "rss": hwm, "disk": ru.ru_inblock * 512, "rchar": int(io["rchar"]), "rchar_mount": rchar_mount,
                "ok": w.returncode == 0 and p.returncode == 0}

    def series(self, fn, runs=None, cold=True, before=None, warm=True):
        """Medians of `runs` cold runs and `runs` warm ones."""
        runs = runs or self.args.runs
        out = {"cold": [], "warm": []}
        for phase in (["cold"] if cold else []) + (["warm"] if warm else []):
            if phase == "warm":
                if before:
                    before()
                fn()  # warms the page cache
            for _ in range(runs):
                if before:
                    before()
                if phase == "cold":
                    self.drop()
                out[phase].append(fn())
        return out

    # -- inputs --------------------------------------------------------------------

    def made(self, path, params, make):
        stamp = path + ".params"
        want = json.dumps(params)
        if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == want:
            return path
        print(f"making {path} ...", file=sys.stderr, flush=True)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        make()
        with open(stamp, "w") as f:
            f.write(want)
        return path

    def inputs(self):
        t = self.args.tiny
        big_n, big_mib = (4, 16) if t else (20, 4096)
        many_n, many_t = (50, 120) if t else (2000, 5000)
        lay_n = 200 if t else 10000
        cs_n = 50 if t else 2000
        py = sys.executable
        w = self.work
        a = self.made(f"{w}/big.tar", [big_n, big_mib], lambda: sh(
            f"{py} {HERE}/make-big.py {w}/big.tar {big_n} {big_mib} && "
            f"skopeo inspect --config docker-archive:{w}/big.tar:localhost/big/app0:v1 >/dev/null"))
        b = self.made(f"{w}/big.tar.gz", [big_n, big_mib], lambda: sh(
            f"gzip -1 -c {w}/big.tar > {w}/big.tar.gz.tmp && mv {w}/big.tar.gz.tmp {w}/big.tar.gz"))
        c = self.made(f"{w}/many.tar", [many_n, many_t], lambda: sh(
            f"{py} {HERE}/make-many.py {w}/many.tar {many_n} {many_t} && "
            f"skopeo inspect --config docker-archive:{w}/many.tar:localhost/bench/app5:v5 >/dev/null"))
        d = self.made(f"{w}/layout", [lay_n], lambda: sh(
            f"{py} {HERE}/make-layout.py {w}/layout {lay_n} && "
            f"skopeo inspect --config oci:{w}/layout:localhost/bench/app5:v5 >/dev/null"))
        template = self.args.cs_template or self.fixture_store()
        e = self.made(f"{w}/cs", [cs_n, template], lambda: (
            sh(f"{py} {HERE}/make-cs.py {template} {w}/cs {cs_n}"),
            self.check_cs(f"{w}/cs", cs_n)))
        return {"a": a, "b": b, "c": c, "d": d, "e": e}

    def fixture_store(self):
        out = f"{self.work}/fixtures"
        if not os.path.isdir(f"{out}/cs"):
            sh(f"bash {ROOT}/mount-tests/make-fixtures.sh {out} >/dev/null")
        return f"{out}/cs"

    def podman(self, store):
        return (f"podman --root {store} --runroot {self.work}/run-{os.path.basename(store)} "
                "--storage-driver vfs --cgroup-manager cgroupfs --events-backend none")

    def check_cs(self, store, n):
        """podman reads a sample of the copies (`podman images` itself takes minutes
        on 2,000 sibling images: it is measured below, once)."""
        entries = json.load(open(f"{store}/vfs-images/images.json"))
        for e in [entries[-n], entries[-2]]:
            out = subprocess.run(
                ["bash", "-c", f"{self.podman(store)} image inspect --format '{{{{.Id}}}} {{{{.RepoTags}}}}' {e['id']}"],
                check=True, capture_output=True, text=True).stdout
            assert e["id"] in out and all(t in out for t in e["names"]), out

    # -- report --------------------------------------------------------------------

    def table(self, title, rows, notes=()):
        """rows: (tool, series or None, extra) with series {'cold': [...], 'warm': [...]}"""
        def med(runs, key):
            v = [r[key] for r in runs if key in r]
            return statistics.median(v) if v else None
        base = None
        for tool, s, _ in rows:
            if tool.startswith("imagefs") and s:
                base = med(s["warm"], "wall")
                break
        lines = []
        head = f"| tool | cold s | warm s | peak RSS | disk read (cold) | ÷ imagefs |"
        lines += [head, "|---|---:|---:|---:|---:|---:|"]
        for tool, s, extra in rows:
            if s is None:
                lines.append(f"| {tool} | {extra} | | | | |")
                continue
            allruns = s["cold"] + s["warm"]
            ok = all(r["ok"] for r in allruns)
            cold = med(s["cold"], "wall")
            warm = med(s["warm"], "wall")
            rss = max(r["rss"] for r in allruns)
            disk = med(s["cold"], "disk") if s["cold"] else None
            ratio = f"{(warm if warm is not None else cold) / base:.2f}x" if base else "-"
            cell = lambda v, f: "-" if v is None else f.format(v)
            name = tool + ("" if ok else " (FAILED)") + (f" {extra}" if extra else "")
            lines.append(f"| {name} | {cell(cold, '{:.3f}')} | {cell(warm, '{:.3f}')} | "
                         f"{rss / 1024:.1f} MiB | {cell(disk and disk / 2**20, '{:.1f} MiB')} | {ratio} |")
        self.results.append((title, lines, list(notes)))
        print(f"\n### {title}\n", flush=True)
        print("\n".join(lines))
        for n in notes:
            print(f"\n{n}")
        sys.stdout.flush()

    def fixed_costs(self, s, needed=None, who="imagefs", ready="store read"):
        m = lambda k: statistics.median(r[k] for r in s["warm"])
        line = (f"{who}, warm medians: mount ready {m('mount') * 1000:.1f} ms "
                f"(daemon started, {ready}, FUSE mounted), the work {m('work') * 1000:.1f} ms, "
                f"unmount {m('umount') * 1000:.1f} ms. Bytes the daemon read (rchar) while "
                f"mounting: {m('rchar_mount') / 1024:.0f} KiB; in all, FUSE requests included: "
                f"{m('rchar') / 1024:.0f} KiB")
        if needed:
            line += (f". Headers + manifest + configs (the header walk's reads): "
                     f"{needed / 1024:.0f} KiB, so imagefs read {m('rchar_mount') / needed:.2f}x that")
        return line

    def needed_bytes(self, path):
        err = subprocess.run([self.walk, path], capture_output=True, text=True).stderr
        return next((int(l.split()[1]) for l in err.splitlines() if l.startswith("needed ")), None)

    # -- the benchmarks ------------------------------------------------------------

    WORKFLOW = "ls -l $M/by-id >/dev/null; find $M/by-tag >/dev/null; cat $M/by-id/* >/dev/null"

    def archive_images(self, path):
        """(index, first tag or None) per manifest.json entry, by GNU tar."""
        out = subprocess.run(["tar", "-xOf", path, "manifest.json"], check=True,
                             capture_output=True).stdout
        return [(i, (e.get("RepoTags") or [None])[0]) for i, e in enumerate(json.loads(out))]

    def skopeo_row(self, transport, refs, runs):
        sample = refs[:50]
        cmd = " && ".join(f"skopeo inspect --config '{transport}{r}' >/dev/null" for r in sample)
        s = self.series(lambda: self.once(cmd), runs=runs)
        if len(sample) < len(refs):
            k = len(refs) / len(sample)
            for r in s["cold"] + s["warm"]:
                r["wall"] *= k
                r["disk"] = int(r["disk"] * k)
            return s, f"({len(sample)} of {len(refs)} images, times scaled)"
        return s, ""

    def ratarmount_rows(self, path):
        if not shutil.which("ratarmount"):
            return [("ratarmount", None, "not installed (pip install ratarmount)")]
        cmd = (f"mp=$(mktemp -d -p {self.work}); ratarmount -f '{path}' $mp & pid=$!; "
               "until mountpoint -q $mp; do sleep 0.01; done; "
               "cat $mp/manifest.json >/dev/null; cat $mp/*.json >/dev/null; "
               "fusermount3 -u $mp 2>/dev/null || umount $mp; wait $pid; rmdir $mp")
        forget = lambda: sh(f"rm -f '{path}.index.sqlite' ~/.ratarmount/*{os.path.basename(path)}* 2>/dev/null; true")
        first = self.series(lambda: self.once(cmd), before=forget)
        second = self.series(lambda: self.once(cmd))
        return [("ratarmount, first mount", first, ""), ("ratarmount, index built", second, "")]

    def bench_archive(self, key, path, title):
        rows = []
        notes = []
        gz = path.endswith(".gz")
        if gz:
            forget = lambda: sh(f"rm -f '{path}.imagefs-index' {self.work}/cache/imagefs/*")
            first = self.series(lambda: self.imagefs_once(path, self.WORKFLOW), before=forget)
            self.imagefs_once(path, "true")  # keep an index for the next series
            kept = self.series(lambda: self.imagefs_once(path, self.WORKFLOW))
            rows.append(("imagefs, first mount (indexing)", first, ""))
            rows.append(("imagefs, index kept", kept, ""))
            notes.append("first mount: " + self.fixed_costs(first))
            notes.append("index kept: " + self.fixed_costs(kept))
            rows.append(("one zlib pass + header walk (physical limit)",
                         self.series(lambda: self.once(f"'{self.walk}' '{path}'")), ""))
            rows.append(("gzip -dc > /dev/null", self.series(lambda: self.once(f"gzip -dc '{path}' >/dev/null")), ""))
        else:
            self.imagefs_once(path, "true")  # keep a catalog for the next series
            s = self.series(lambda: self.imagefs_once(path, self.WORKFLOW))
            rows.append(("imagefs (mount, ls -l, find, cat, umount), catalog kept", s, ""))
            full = self.series(lambda: self.imagefs_once(path, self.WORKFLOW, ["-o", "rescan"]))
            rows.append(("imagefs, the same reading the archive in full (-o rescan)", full, ""))
            needed = self.needed_bytes(path)
            notes.append("catalog kept: " + self.fixed_costs(s, needed))
            notes.append("-o rescan: " + self.fixed_costs(full, needed))
            rows.append(("header walk (physical limit)",
                         self.series(lambda: self.once(f"'{self.walk}' '{path}'")), ""))
            # What the same commands cost with no FUSE at all: no mounted tool's
            # workflow can take less than this plus a process start and a umount.
            copy = self.tmpfs_copy(path, key)
            try:
                rows.append(("the same ls -l, find, cat on a tmpfs copy of the tree (no mount: "
                             "the floor of any mounted tool)",
                             self.series(lambda: self.once(self.WORKFLOW.replace("$M", copy))), ""))
                floor = self.series(lambda: self.server_once(copy, self.WORKFLOW))
                rows.append(("the same workflow served by a minimal in-memory FUSE server "
                             "(the floor of any FUSE tool)", floor, ""))
                notes.append(self.fixed_costs(floor, who="the minimal FUSE server",
                                              ready="its snapshot of the tree read"))
                notes.append(self.against_floor(s, full, floor))
            finally:
                sh(f"umount {copy}; rmdir {copy}")
        if self.args.floors_only:
            self.table(title, rows, notes)
            return
        rows.append(("GNU tar extract + sha256sum", self.series(lambda: self.once(
            f"d=$(mktemp -d -p {self.work}); tar -xf '{path}' -C $d --wildcards manifest.json '*.json'; "
            f"sha256sum $d/*.json >/dev/null; rm -rf $d")), ""))
        images = self.archive_images(path)
        refs = [f":@{i}" for i, _ in images]
        if gz and not self.once(f"skopeo inspect --config 'docker-archive:{path}:@0'")["ok"]:
            rows.append(("skopeo inspect --config", None, "fails: this skopeo does not read a gzip docker-archive"))
        else:
            s, extra = self.skopeo_row(f"docker-archive:{path}", refs, None)
            rows.append(("skopeo inspect --config, every image", s, extra))
        rows += self.ratarmount_rows(path)
        if key == "a" or (self.args.tiny and key == "c"):
            store = f"{self.work}/podman-load"
            cmd = (f"rm -rf {store}; {self.podman(store)} load -q -i '{path}' && "
                   f"{self.podman(store)} images -a --format json")
            s = self.series(lambda: self.once(cmd), runs=1)
            sh(f"rm -rf {store}")
            rows.append(("podman load + podman images", s, "(1 cold run, 1 warm)"))
        elif not gz:
            notes.append("podman load is not run on this input (the issue measured 853 s for it).")
        self.table(title, rows, notes)

    def against_floor(self, kept, full, floor):
        """imagefs against the minimal FUSE server, warm medians (issue 17, part 4)."""
        med = lambda s, k: statistics.median(r[k] for r in s["warm"])
        parts = []
        for name, s in (("catalog kept", kept), ("-o rescan", full)):
            parts.append(f"{name}: the whole {med(s, 'wall') / med(floor, 'wall'):.2f}x, "
                         f"mount ready {med(s, 'mount') / med(floor, 'mount'):.2f}x, "
                         f"the work {med(s, 'work') / med(floor, 'work'):.2f}x")
        return "imagefs ÷ the minimal FUSE server, warm: " + "; ".join(parts)

    def tmpfs_copy(self, source, name):
        """The mounted tree copied (hard and symbolic links kept) to a tmpfs."""
        dst = f"{self.work}/tmpfs-{name}"
        if os.path.ismount(dst):
            sh(f"umount {dst}")
        os.makedirs(dst, exist_ok=True)
        sh(f"mount -t tmpfs tmpfs {dst}")
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.work)
        sh(f"'{self.bin}' '{source}' {mp} && cp -a {mp}/. {dst}/ ; umount {mp}; rmdir {mp}")
        if os.path.exists(f"{dst}.snap"):
            os.unlink(f"{dst}.snap")
        return dst

    def bench_tree(self, key, source, title, user_tool=None, stat_test=False):
        copy = self.tmpfs_copy(source, key)
        try:
            rows = []
            find = "find $M/by-id -links 1 >/dev/null"
            self.imagefs_once(source, "true")  # keep a catalog for the next series
            s = self.series(lambda: self.imagefs_once(source, find, with_umount=False))
            rows.append(("imagefs: mount + find by-id -links 1, catalog kept", s, ""))
            full = self.series(lambda: self.imagefs_once(source, find, ["-o", "rescan"],
                                                          with_umount=False))
            rows.append(("imagefs: the same reading the store in full (-o rescan)", full, ""))
            rows.append(("tmpfs copy: find by-id -links 1",
                         self.series(lambda: self.once(find.replace("$M", copy))), ""))
            floor = self.series(lambda: self.server_once(copy, find, with_umount=False))
            rows.append(("minimal in-memory FUSE server on the same tree: mount + find by-id -links 1",
                         floor, ""))
            notes = ["catalog kept: " + self.fixed_costs(s) + " (the unmount is not in the table's time)",
                     "-o rescan: " + self.fixed_costs(full),
                     self.fixed_costs(floor, who="the minimal FUSE server",
                                      ready="its snapshot of the tree read"),
                     self.against_floor(s, full, floor)]
            n_links1 = subprocess.run(["bash", "-c", f"find {copy}/by-id -links 1 | wc -l"],
                                      capture_output=True, text=True).stdout.strip()
            notes.append(f"untagged images found: {n_links1}; peak RSS of the imagefs daemon: "
                         f"{max(r['rss'] for r in s['cold'] + s['warm']) / 1024:.1f} MiB")
            if user_tool and not self.args.floors_only:
                once = not self.args.tiny
                s = self.series(lambda: self.once(user_tool[1]), runs=1 if once else None, warm=not once)
                rows.append((user_tool[0], s, "(1 cold run: it takes minutes)" if once else ""))
            self.table(title, rows, notes)
            if stat_test:
                self.bench_stat(source, copy, title)
        finally:
            sh(f"umount {copy}; rmdir {copy}")

    def bench_stat(self, source, copy, title):
        """`stat` of every by-tag entry, on a mount that stays up (kernel caches as
        they are after the first pass) and on the tmpfs copy."""
        mp = tempfile.mkdtemp(prefix="mnt-", dir=self.work)
        sh(f"'{self.bin}' '{source}' {mp}")
        try:
            cmd = "find $M/by-tag -mindepth 1 -print0 | xargs -0 stat >/dev/null"
            first = self.once(cmd.replace("$M", mp))
            s = self.series(lambda: self.once(cmd.replace("$M", mp)), cold=False)
            t = self.series(lambda: self.once(cmd.replace("$M", copy)), cold=False)
            rows = [("imagefs mount, stat every by-tag entry", s, f"(first pass {first['wall']:.3f} s)"),
                    ("tmpfs copy, stat every by-tag entry", t, "")]
            self.table(title + ": stat over by-tag", rows)
        finally:
            sh(f"umount {mp}; rmdir {mp}")

    def bench_fixed_costs(self, source):
        """Mount and unmount alone, on a small input: what every workflow pays."""
        fg = self.series(lambda: self.imagefs_once(source, "true"), cold=False)
        daemon = self.series(lambda: self.once(
            f"mp=$(mktemp -d -p {self.work}); '{self.bin}' '{source}' $mp && umount $mp; rmdir $mp"),
            cold=False)
        spawn = self.series(lambda: self.once("true"), cold=False)
        med = lambda s, k: statistics.median(r[k] for r in s["warm"]) * 1000
        lines = ["| step | warm ms |", "|---|---:|",
                 f"| start a process (`bash -c true`, the floor of any tool) | {med(spawn, 'wall'):.1f} |",
                 f"| imagefs -f: start, read the store, mount | {med(fg, 'mount'):.1f} |",
                 f"| unmount: umount and the daemon's exit | {med(fg, 'umount'):.1f} |",
                 f"| imagefs daemonizing (returns once mounted) + umount, with mktemp and rmdir in one "
                 f"`bash -c` under /usr/bin/time (six process starts) | {med(daemon, 'wall'):.1f} |"]
        self.results.append((f"fixed costs ({os.path.basename(source)})", lines, []))
        print(f"\n### fixed costs ({os.path.basename(source)})\n")
        print("\n".join(lines), flush=True)

    def run(self):
        inputs = self.inputs()
        only = set(self.args.only.split(","))
        if "a" in only:
            self.bench_fixed_costs(inputs["a"])
        size = lambda p: os.path.getsize(p) / 2**20
        if "a" in only:
            self.bench_archive("a", inputs["a"], f"(a) docker-archive, 20 images, {size(inputs['a']):.0f} MiB")
        if "b" in only:
            self.bench_archive("b", inputs["b"], f"(b) the same, gzip -1, {size(inputs['b']):.0f} MiB")
        if "c" in only:
            self.bench_archive("c", inputs["c"], f"(c) docker-archive, many small images, {size(inputs['c']):.0f} MiB")
            self.bench_tree("c", inputs["c"], "(c) tree: untagged images", stat_test=True)
        if "d" in only:
            self.bench_tree("d", f"oci:{inputs['d']}", "(d) OCI layout, index entries: untagged images")
        if "e" in only:
            self.bench_tree("e", f"containers-storage:{inputs['e']}",
                            "(e) containers-storage: untagged images",
                            user_tool=("podman images -a (the user's tool)",
                                       f"{self.podman(inputs['e'])} images -a --format json"))
        with open(f"{self.work}/results.md", "w") as f:
            for title, lines, notes in self.results:
                f.write(f"### {title}\n\n" + "\n".join(lines) + "\n\n")
                for n in notes:
                    f.write(n + "\n\n")
        if not self.cold_ok:
            print("\n(drop_caches was not permitted: the cold columns are warm)")
        print(f"\n(medians of {self.args.runs}; the ratio is warm wall time over imagefs's; "
              f"tables also in {self.work}/results.md)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", nargs="?", default="/var/tmp/imagefs-bench-list")
    p.add_argument("--tiny", action="store_true", help="tiny inputs (CI: it must keep working)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="a,b,c,d,e")
    p.add_argument("--floors-only", action="store_true",
                   help="imagefs and the floors (header walk, tmpfs copy, minimal FUSE "
                   "server) only: no tar, skopeo, ratarmount or podman rows")
    p.add_argument("--bin", help="imagefs binary (default: build --release)")
    p.add_argument("--walk", help="header_walk binary (default: build --release)")
    p.add_argument("--server", help="tree_server binary, the minimal FUSE server "
                   "(default: build --release)")
    p.add_argument("--cs-template", help="a containers-storage store to multiply "
                   "(default: make one with make-fixtures.sh)")
    args = p.parse_args()
    if not args.bin or not args.walk or not args.server:
        sh(f"cd {ROOT} && cargo build --release -q && cargo build --release -q "
           "--example header_walk --example tree_server")
        args.bin = args.bin or f"{ROOT}/target/release/imagefs"
        args.walk = args.walk or f"{ROOT}/target/release/examples/header_walk"
        args.server = args.server or f"{ROOT}/target/release/examples/tree_server"
    Bench(args).run()


if __name__ == "__main__":
    main()
