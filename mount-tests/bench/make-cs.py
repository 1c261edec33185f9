#!/usr/bin/env python3
"""Benchmark input (e): a containers-storage (vfs) store of IMAGES images, made from a
store the real tools wrote (buildah, in make-fixtures.sh): one of its images is
copied IMAGES times, each with a top layer of its own on the image's layers (as a
build step adds one; the layer is recorded in layers.json with an empty vfs
directory), a new config (that layer's diff ID and a label), so a new ID, and a
manifest pointing at it; images.json gets an entry per copy in the form
containers/storage writes. Every tenth copy is untagged. Checked by the benchmark with
`podman images` on the result.

usage: make-cs.py TEMPLATE_STORE OUT_STORE IMAGES [TAGS]

TAGS (default 1): how many names each tagged copy gets (`:v<N>`, then `:v<N>-<k>`).
"""
import base64
import hashlib
import json
import os
import re
import shutil
import sys


def file_name(key):
    return key if re.fullmatch(r"[0-9a-z.]+", key) else "=" + base64.b64encode(key.encode()).decode()


def main():
    template, out, images = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tags = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(template, out, symlinks=True)
    shutil.rmtree(os.path.join(out, "libpod"), ignore_errors=True)
    idir = os.path.join(out, "vfs-images")
    entries = json.load(open(os.path.join(idir, "images.json")))
    base = next(e for e in entries if "manifest" in e.get("big-data-names", [])
                and any(n.startswith("sha256:") for n in e["big-data-names"]))
    cfg_key = next(n for n in base["big-data-names"] if n.startswith("sha256:"))
    config = json.load(open(os.path.join(idir, base["id"], file_name(cfg_key)), "rb"))
    manifest = json.load(open(os.path.join(idir, base["id"], "manifest"), "rb"))
    ldir = os.path.join(out, "vfs-layers")
    layers = json.load(open(os.path.join(ldir, "layers.json")))
    diff_ids = list(config["rootfs"]["diff_ids"])
    base_layers = list(manifest["layers"])
    for i in range(images):
        top = hashlib.sha256(f"bench-cs-layer-{i}".encode()).hexdigest()
        diff = "sha256:" + hashlib.sha256(f"bench-cs-diff-{i}".encode()).hexdigest()
        layers.append({"id": top, "parent": base["layer"], "created": "2024-04-01T00:00:00Z",
                       "compressed-diff-digest": diff, "compressed-size": 1024,
                       "diff-digest": diff, "diff-size": 1024})
        os.makedirs(os.path.join(out, "vfs", "dir", top), exist_ok=True)
        config["rootfs"]["diff_ids"] = diff_ids + [diff]
        manifest["layers"] = base_layers + [{
            "mediaType": base_layers[-1]["mediaType"], "digest": diff, "size": 1024}]
        config.setdefault("config", {}).setdefault("Labels", {})["bench"] = str(i)
        cbytes = json.dumps(config, separators=(",", ":")).encode()
        cid = hashlib.sha256(cbytes).hexdigest()
        manifest["config"]["digest"] = "sha256:" + cid
        manifest["config"]["size"] = len(cbytes)
        mbytes = json.dumps(manifest, separators=(",", ":")).encode()
        mdig = "sha256:" + hashlib.sha256(mbytes).hexdigest()
        big = {"sha256:" + cid: cbytes, "manifest-" + mdig: mbytes, "manifest": mbytes}
        os.makedirs(os.path.join(idir, cid), exist_ok=True)
        for k, v in big.items():
            with open(os.path.join(idir, cid, file_name(k)), "wb") as f:
                f.write(v)
        names = [] if i % 10 == 9 else [f"localhost/bench/cs{i % 97}:v{i}"] + [
            f"localhost/bench/cs{i % 97}:v{i}-{k}" for k in range(1, tags)]
        entries.append({
            "id": cid, "digest": mdig, "names": names, "layer": top,
            "metadata": "{}",
            "big-data-names": list(big),
            "big-data-sizes": {k: len(v) for k, v in big.items()},
            "big-data-digests": {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in big.items()},
            "created": "2024-04-01T00:00:00Z",
        })
    with open(os.path.join(idir, "images.json"), "w") as f:
        json.dump(entries, f, separators=(",", ":"))
    with open(os.path.join(ldir, "layers.json"), "w") as f:
        json.dump(layers, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
