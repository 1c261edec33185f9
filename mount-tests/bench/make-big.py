#!/usr/bin/env python3
"""Benchmark input (a): a docker-archive (the pre-25 `docker save` layout:
<v1id>/layer.tar, <id>.json configs, manifest.json, repositories) of IMAGES images
whose layers hold TOTAL_MIB of incompressible (random) bytes in all. Some images have
several tags, the last one none. Written in one pass, layers hashed as they are
written. Checked by the benchmark with `skopeo inspect` on a sample.

usage: make-big.py OUT.tar IMAGES TOTAL_MIB
"""
import hashlib
import io
import json
import os
import sys
import tarfile

from docker_save import Index, add

CHUNK = 4 << 20


class RandomLayer(io.RawIOBase):
    """A layer tar (one file of SIZE random bytes) produced as it is read; its sha256
    (the diff ID) is known once it has been read to the end."""

    def __init__(self, size):
        inner = tarfile.TarInfo("data/blob")
        inner.size = size
        inner.mode = 0o644
        self.parts = [inner.tobuf(format=tarfile.GNU_FORMAT)]
        self.left = size
        self.tail = b"\0" * ((512 - size % 512) % 512 + 1024)
        self.hash = hashlib.sha256()
        self.total = len(self.parts[0]) + size + len(self.tail)

    def readable(self):
        return True

    def readinto(self, b):
        if self.parts:
            data = self.parts.pop()
        elif self.left > 0:
            data = os.urandom(min(CHUNK, self.left, len(b)))
            self.left -= len(data)
        elif self.tail:
            data, self.tail = self.tail, b""
        else:
            return 0
        if len(data) > len(b):
            data, rest = data[: len(b)], data[len(b):]
            self.parts.append(rest)
        self.hash.update(data)
        b[: len(data)] = data
        return len(data)



def main():
    out, images, total_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    per = (total_mib << 20) // images
    index = Index()
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(images):
            # the sizes vary a little so that no two layers are alike in length
            layer = RandomLayer(per - i * 4096)
            v1id = hashlib.sha256(f"bench-big-{i}".encode()).hexdigest()
            info = tarfile.TarInfo(f"{v1id}/layer.tar")
            info.size = layer.total
            info.mode = 0o444
            tar.addfile(info, io.BufferedReader(layer, CHUNK))
            diff = layer.hash.hexdigest()
            config = json.dumps({
                "created": f"2024-02-01T00:00:{i % 60:02d}Z",
                "architecture": "amd64", "os": "linux",
                "config": {"Labels": {"bench": f"big-{i}"}},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]},
                "history": [{"created_by": f"bench big image {i}"}],
            }, separators=(",", ":")).encode()
            cid = hashlib.sha256(config).hexdigest()
            add(tar, cid + ".json", config)
            if i == images - 1:
                names = []
            elif i % 3 == 0:
                names = [f"localhost/big/app{i}:v1", f"localhost/big/app{i}:latest",
                         f"registry.example:5000/mirror/app{i}:v1"]
            else:
                names = [f"localhost/big/app{i}:v1"]
            index.image(cid + ".json", names, [f"{v1id}/layer.tar"], v1id)
        index.write(tar)


if __name__ == "__main__":
    main()
