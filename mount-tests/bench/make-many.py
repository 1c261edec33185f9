#!/usr/bin/env python3
"""Benchmark input (c): a docker-archive of many small images and more tags, in the
format `docker save`/`podman save` write (manifest.json, <id>.json configs,
<diffid>.tar layers, repositories). One untagged image. Checked by the benchmark
with `skopeo inspect` on a sample.

usage: make-many.py OUT.tar IMAGES TAGS
"""
import hashlib
import io
import json
import sys
import tarfile

from docker_save import Index, add



def layer(i):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        add(t, "app/version", f"image {i}\n".encode())
    return buf.getvalue()


def main():
    out, images, tags = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    index = Index()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(images):
            lay = layer(i)
            diff = hashlib.sha256(lay).hexdigest()
            config = json.dumps({
                "created": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                "architecture": "amd64", "os": "linux",
                "config": {"Labels": {"bench": str(i)}},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]},
                "history": [{"created_by": f"bench image {i}"}],
            }, separators=(",", ":")).encode()
            cid = hashlib.sha256(config).hexdigest()
            add(tar, diff + ".tar", lay)
            add(tar, cid + ".json", config)
            # tags spread over the images; the last image stays untagged
            names = [] if i == images - 1 else [
                f"localhost/bench/app{t % 97}:v{t}" for t in range(i, tags, images - 1)]
            index.image(cid + ".json", names, [diff + ".tar"], diff)
        index.write(tar)


if __name__ == "__main__":
    main()
