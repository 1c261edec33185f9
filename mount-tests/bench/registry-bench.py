#!/usr/bin/env python3
"""The registry benchmark (issue 16): how fast each tool answers "which images (ID,
tags) does this registry serve", all measured in the same run, beside imagefs.

usage: mount-tests/bench/registry-bench.py [--tiny] [--bin BIN] [--parallel N] [WORKDIR]

Input, made offline under WORKDIR (kept between runs, remade when its parameters
change): a docker-registry (distribution 2.8) on 127.0.0.1 holding 10,000 tags over
100 repositories, 2,000 distinct images (a config each and one shared layer), pushed
through the registry API; checked with skopeo inspect on a sample.

Networks: plain loopback, and 20 ms of added round-trip time. This kernel has no netem
(`tc qdisc add dev lo root netem` is refused), so the delay comes from
mount-tests/fault-proxy.py --delay-ms 20 in front of the registry: 20 ms more for each
request and for each new connection, for every tool alike.

Tools:
  imagefs: mount -f, ls -l by-id, find by-tag, read every config, unmount. Cold (an
    empty cache directory) and warm (the one the cold run kept: an unchanged registry).
  the limit: a minimal client (threads, keep-alive) making exactly the requests the
    answer needs at imagefs's parallelism: the catalog, the tags lists, a manifest per
    tag, a config per distinct image.
  skopeo list-tags + skopeo inspect --config per tag, as users script it: serially,
    and with xargs -P at imagefs's parallelism (a sample of tags, scaled to all).
Requests are counted from the registry's access log. Figures: wall time (median of
the runs), peak RSS for imagefs, requests by kind; the targets of issue 16 are
printed with whether they were met. A benchmark, not a test: nothing fails on time.
"""

import argparse
import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", MT_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, what, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"registry-bench: {what} did not start")


class Registry:
    def __init__(self, data):
        self.port = free_port()
        self.dir = data
        self.log = os.path.join(data, "access.log")
        cfg = os.path.join(data, "config.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {data}/store\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n")
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=logf,
                                     stderr=logf)
        wait_port(self.port, "docker-registry")

    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def mark(self):
        return os.path.getsize(self.log)

    def requests(self, since):
        """Requests logged since `since`, by kind."""
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        kinds = {"catalog": 0, "tags list": 0, "manifest GET": 0, "manifest HEAD": 0,
                 "blob GET": 0, "other": 0}
        for line in text.splitlines():
            if '"' not in line:
                continue
            req = line.split('"')[1].split(" ")
            if len(req) < 2:
                continue
            method, path = req[0], req[1]
            if "/_catalog" in path:
                kinds["catalog"] += 1
            elif "/tags/list" in path:
                kinds["tags list"] += 1
            elif "/manifests/" in path:
                kinds["manifest " + ("HEAD" if method == "HEAD" else "GET")] += 1
            elif "/blobs/" in path and method == "GET":
                kinds["blob GET"] += 1
            elif path not in ("/v2/", "/v2"):
                kinds["other"] += 1
        return kinds


class Proxy:
    def __init__(self, upstream, delay_ms, workdir):
        self.port = free_port()
        rules = os.path.join(workdir, "rules.json")
        with open(rules, "w") as f:
            f.write("[]")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "mount-tests", "fault-proxy.py"), str(self.port),
             upstream, rules, os.path.join(workdir, "proxy.log"), "--delay-ms", str(delay_ms)],
            stdout=subprocess.DEVNULL)
        wait_port(self.port, "the delaying proxy")

    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = b"imagefs registry benchmark\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        info.mtime = 0
        t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, mtime=0)


def fill(addr, repos, images, tags):
    """Pushes `images` distinct images over `repos` repositories, `tags` tags in all."""
    raw, gz = layer()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer_digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    c = http.client.HTTPConnection(addr, timeout=60)

    def call(method, path, body=None, headers=None, want=(200, 201, 202)):
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        r.read()
        if r.status not in want:
            sys.exit(f"registry-bench: {method} {path}: {r.status}")
        return r

    def upload(repo, data, digest):
        r = call("POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
        loc = r.getheader("Location")
        loc = loc[loc.index("/v2/"):] if "/v2/" in loc else loc
        sep = "&" if "?" in loc else "?"
        call("PUT", f"{loc}{sep}digest={digest}", data,
             {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})

    per_repo = images // repos
    tags_per_image = tags // images
    for r_i in range(repos):
        repo = f"bench/r{r_i:03d}"
        upload(repo, gz, layer_digest)
        for k in range(per_repo):
            n = r_i * per_repo + k
            config = json.dumps({
                "architecture": "amd64", "os": "linux",
                "created": "2026-01-01T00:00:00Z",
                "config": {"Labels": {"bench.image": str(n)}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }).encode()
            cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
            upload(repo, config, cdigest)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "size": len(config), "digest": cdigest},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "size": len(gz), "digest": layer_digest}],
            }).encode()
            for t in range(tags_per_image):
                call("PUT", f"/v2/{repo}/manifests/v{k:02d}-{t}", manifest,
                     {"Content-Type": MT_MANIFEST})
    c.close()


def skopeo_config_id(addr, ref):
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", "--raw",
                          f"docker://{addr}/{ref}"], capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def minimal_client(addr, parallel):
    """Exactly the requests the answer needs, `parallel` at a time, kept alive."""
    local = threading.local()

    def conn():
        if getattr(local, "c", None) is None:
            local.c = http.client.HTTPConnection(addr, timeout=60)
        return local.c

    def get(path, headers=None):
        c = conn()
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r, r.read()

    def pool(items, f):
        out = [None] * len(items)
        it = iter(range(len(items)))
        lock = threading.Lock()

        def work():
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                out[i] = f(items[i])
        threads = [threading.Thread(target=work) for _ in range(min(parallel, len(items)) or 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def paged(path, key):
        items = []
        while path:
            r, body = get(path)
            items += json.loads(body).get(key) or []
            link = r.getheader("Link")
            path = link.split(";")[0].strip("<> ") if link and 'rel="next"' in link else None
        return items

    repos = paged("/v2/_catalog?n=1000", "repositories")
    tags = [(repo, t) for repo, ts in zip(repos, pool(repos, lambda r: paged(
        f"/v2/{r}/tags/list?n=1000", "tags"))) for t in ts]
    manifests = pool(tags, lambda rt: (rt[0], json.loads(get(
        f"/v2/{rt[0]}/manifests/{rt[1]}", {"Accept": ACCEPT})[1])))
    configs = sorted({(repo, m["config"]["digest"]) for repo, m in manifests})
    seen, distinct = set(), []
    for repo, d in configs:
        if d not in seen:
            seen.add(d)
            distinct.append((repo, d))
    pool(distinct, lambda rd: get(f"/v2/{rd[0]}/blobs/{rd[1]}"))
    return len(tags), len(distinct)


def is_mounted(mp):
    with open("/proc/self/mountinfo") as f:
        return any(l.split(" ")[4] == mp for l in f)


def imagefs_run(binary, addr, cache, mp, parallel):
    """Mount, ls -l by-id, find by-tag, read every config, unmount: wall s, peak RSS
    KiB, images, tags."""
    env = dict(os.environ, XDG_CACHE_HOME=cache, RUST_LOG="imagefs=warn")
    rss_file = os.path.join(cache, "rss")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", "-o", rss_file, binary, "-f", "-o",
         f"registry_parallel={parallel}", f"registry:{addr}", mp],
        env=env, stderr=subprocess.PIPE)
    while not is_mounted(mp):
        if proc.poll() is not None:
            sys.exit(f"registry-bench: imagefs exited: {proc.stderr.read().decode()}")
        time.sleep(0.005)
    ids = os.listdir(os.path.join(mp, "by-id"))
    for i in ids:
        os.lstat(os.path.join(mp, "by-id", i))
    n_tags = 0
    for _, _, files in os.walk(os.path.join(mp, "by-tag")):
        n_tags += len(files)
    for i in ids:
        with open(os.path.join(mp, "by-id", i), "rb") as f:
            f.read()
    subprocess.run(["umount", mp], check=True)
    proc.wait()
    wall = time.monotonic() - started
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return wall, rss, len(ids), n_tags


def skopeo_script(addr, tags, parallel):
    """skopeo list-tags per repository, then inspect --config per tag; wall s."""
    repos = sorted({r for r, _ in tags})
    started = time.monotonic()
    for r in repos:
        subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{addr}/{r}"],
                       capture_output=True, check=True)
    refs = "\n".join(f"docker://{addr}/{r}:{t}" for r, t in tags) + "\n"
    subprocess.run(["xargs", "-P", str(parallel), "-n", "1", "skopeo", "inspect",
                    "--tls-verify=false", "--config", "--raw"], input=refs.encode(),
                   capture_output=True, check=True)
    return time.monotonic() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", nargs="?", default="/var/tmp/imagefs-bench-registry")
    ap.add_argument("--tiny", action="store_true", help="a few tags, to keep it working")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "imagefs"))
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    repos, images, tags = (2, 4, 12) if args.tiny else (100, 2000, 10000)
    runs = 1 if args.tiny else args.runs
    sample_serial, sample_parallel = (4, 8) if args.tiny else (100, 800)

    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, f"registry-{repos}-{images}-{tags}")
    fresh = not os.path.exists(os.path.join(data, "filled"))
    if fresh:
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
    reg = Registry(data)
    try:
        if fresh:
            t = time.monotonic()
            fill(reg.addr(), repos, images, tags)
            open(os.path.join(data, "filled"), "w").close()
            print(f"input: {tags} tags over {repos} repositories, {images} images, pushed in "
                  f"{time.monotonic() - t:.1f} s", flush=True)
        # the input checked with the real tool on a sample
        want = skopeo_config_id(reg.addr(), "bench/r000:v00-0")
        networks = [("loopback", None), ("20 ms RTT", 20)]
        results = {}
        for name, delay in networks:
            proxy = Proxy(reg.addr(), delay, args.workdir) if delay else None
            addr = proxy.addr() if proxy else reg.addr()
            mp = tempfile.mkdtemp(prefix="ifs-regbench-")
            row = {}
            cold, warm, cold_rss, warm_rss = [], [], 0, 0
            for _ in range(runs):
                cache = tempfile.mkdtemp(prefix="ifs-regcache-")
                mark = reg.mark()
                w, rss, n_ids, n_tags = imagefs_run(args.bin, addr, cache, mp, args.parallel)
                cold.append(w)
                cold_rss = max(cold_rss, rss)
                row["cold requests"] = reg.requests(mark)
                mark = reg.mark()
                w, rss, n_ids2, n_tags2 = imagefs_run(args.bin, addr, cache, mp, args.parallel)
                warm.append(w)
                warm_rss = max(warm_rss, rss)
                row["warm requests"] = reg.requests(mark)
                shutil.rmtree(cache, ignore_errors=True)
                if (n_ids, n_tags) != (images, tags) or (n_ids2, n_tags2) != (images, tags):
                    sys.exit(f"registry-bench: imagefs showed {n_ids} images, {n_tags} tags "
                             f"(then {n_ids2}, {n_tags2}); the registry holds {images}, {tags}")
            row["imagefs cold"] = statistics.median(cold)
            row["imagefs warm"] = statistics.median(warm)
            row["rss"] = (cold_rss, warm_rss)
            mins = []
            for _ in range(runs):
                mark = reg.mark()
                t = time.monotonic()
                n_t, n_i = minimal_client(addr, args.parallel)
                mins.append(time.monotonic() - t)
                row["minimal requests"] = reg.requests(mark)
            row["minimal"] = statistics.median(mins)
            all_tags = [(f"bench/r{r:03d}", f"v{k:02d}-{t}") for r in range(repos)
                        for k in range(images // repos) for t in range(tags // images)]
            step = max(1, len(all_tags) // sample_serial)
            sample = all_tags[::step][:sample_serial]
            row["skopeo serial"] = skopeo_script(addr, sample, 1) * len(all_tags) / len(sample)
            step = max(1, len(all_tags) // sample_parallel)
            sample = all_tags[::step][:sample_parallel]
            row["skopeo -P"] = skopeo_script(addr, sample, args.parallel) * len(all_tags) / len(sample)
            results[name] = row
            os.rmdir(mp)
            if proxy:
                proxy.stop()
    finally:
        reg.stop()

    print(f"\n## registry: {tags} tags, {repos} repositories, {images} images "
          f"(checked: skopeo names bench/r000:v00-0 {want[:19]}…)\n")
    print(f"parallelism {args.parallel}; medians of {runs}; skopeo on a sample of "
          f"{sample_serial} (serial) and {sample_parallel} (-P) tags, scaled to {tags}\n")
    print("| tool | " + " | ".join(n for n, _ in networks) + " |")
    print("|---|" + "---:|" * len(networks))
    for key, label in [("imagefs cold", "imagefs: mount, ls -l, find, read every config, umount; cold"),
                       ("imagefs warm", "imagefs: the same, warm (unchanged registry, kept state)"),
                       ("minimal", "the limit: a minimal client, the needed requests only"),
                       ("skopeo -P", f"skopeo list-tags + inspect --config, xargs -P {args.parallel}"),
                       ("skopeo serial", "skopeo list-tags + inspect --config, serially")]:
        cells = []
        for n, _ in networks:
            v = results[n][key]
            cells.append(f"{v:.2f} s ({v / results[n]['imagefs cold']:.2f}x)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for n, _ in networks:
        r = results[n]
        print(f"{n}: requests cold {r['cold requests']}, warm {r['warm requests']}, "
              f"minimal client {r['minimal requests']}; imagefs peak RSS cold "
              f"{r['rss'][0] / 1024:.1f} MiB, warm {r['rss'][1] / 1024:.1f} MiB")
    print("\ntargets (issue 16):")
    for n, _ in networks:
        r = results[n]
        print(f"  {n}: cold within 1.5x of the minimal client: "
              f"{r['imagefs cold'] / r['minimal']:.2f}x -> "
              f"{'met' if r['imagefs cold'] <= 1.5 * r['minimal'] else 'NOT met'}")
        print(f"  {n}: at least 10x faster than serial skopeo: "
              f"{r['skopeo serial'] / r['imagefs cold']:.0f}x -> "
              f"{'met' if r['skopeo serial'] >= 10 * r['imagefs cold'] else 'NOT met'}")
        print(f"  {n}: RSS under 64 MB: {max(r['rss']) / 1024:.1f} MiB -> "
              f"{'met' if max(r['rss']) < 64 * 1000 else 'NOT met'}")
    slow = results["20 ms RTT"]
    print(f"  20 ms RTT: warm at most half of cold: "
          f"{slow['imagefs warm'] / slow['imagefs cold']:.2f} -> "
          f"{'met' if slow['imagefs warm'] <= 0.5 * slow['imagefs cold'] else 'NOT met'}")
    wr = slow["warm requests"]
    print(f"  warm requests: tags lists {wr['tags list']}, HEADs {wr['manifest HEAD']} "
          f"(tags: {tags}), manifest GETs {wr['manifest GET']}, config GETs {wr['blob GET']}")


if __name__ == "__main__":
    main()
