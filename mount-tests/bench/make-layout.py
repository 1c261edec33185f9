#!/usr/bin/env python3
"""Benchmark input (d): an OCI image layout with ENTRIES index entries, each its own
image (config + manifest; one small layer shared by all), named
`localhost/bench/app<N%97>:v<N>` in org.opencontainers.image.ref.name; every tenth
entry unnamed. Checked by the benchmark with `skopeo inspect` on a sample.

usage: make-layout.py DIR ENTRIES [TAGS]

TAGS (default 1): how many names each named image gets: its entry's, then an entry of
the same manifest per further name (`:v<N>-<k>`), as skopeo adds a tag to a layout.
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    root, entries = sys.argv[1], int(sys.argv[2])
    tags = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("app/version")
        data = b"shared layer\n"
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer_bytes = buf.getvalue()
    layer = dict(blob(root, layer_bytes), mediaType="application/vnd.oci.image.layer.v1.tar")
    diff = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    index = []
    for i in range(entries):
        config = json.dumps({
            "created": f"2024-03-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"bench": str(i)}},
            "rootfs": {"type": "layers", "diff_ids": [diff]},
            "history": [{"created_by": f"bench layout image {i}"}],
        }, separators=(",", ":")).encode()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": dict(blob(root, config), mediaType="application/vnd.oci.image.config.v1+json"),
            "layers": [layer],
        }, separators=(",", ":")).encode()
        entry = dict(blob(root, manifest), mediaType="application/vnd.oci.image.manifest.v1+json")
        if i % 10 != 9:
            for k in range(tags):
                name = f"localhost/bench/app{i % 97}:v{i}" + (f"-{k}" if k else "")
                index.append(dict(entry, annotations={"org.opencontainers.image.ref.name": name}))
        else:
            index.append(entry)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": index}, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
