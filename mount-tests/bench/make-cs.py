#!/usr/bin/env python3
"""Benchmark input (e): a containers-storage (vfs) store of IMAGES images, made from a
store the real tools wrote (buildah, in make-fixtures.sh): one of its images is
copied IMAGES times with a new config each (a label), so a new ID, and a manifest
pointing at it, all sharing its layer; images.json gets an entry per copy in the form
containers/storage writes. Every tenth copy is untagged. Checked by the benchmark with
`podman images` on the result.

usage: make-cs.py TEMPLATE_STORE OUT_STORE IMAGES
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
    for i in range(images):
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
        names = [] if i % 10 == 9 else [f"localhost/bench/cs{i % 97}:v{i}"]
        entries.append({
            "id": cid, "digest": mdig, "names": names, "layer": base["layer"],
            "metadata": "{}",
            "big-data-names": list(big),
            "big-data-sizes": {k: len(v) for k, v in big.items()},
            "big-data-digests": {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in big.items()},
            "created": "2024-04-01T00:00:00Z",
        })
    with open(os.path.join(idir, "images.json"), "w") as f:
        json.dump(entries, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
