#!/usr/bin/env python3
"""Derives the malformed archives real tools will not make from a real `podman save`
archive, for the mount tests.

usage: mangle.py CASE IN.tar OUT.tar [ARG]
  drop-member NAME         the archive without member NAME (a missing config)
  tamper-member NAME       member NAME with one byte changed (a digest mismatch)
  unsafe-names             extra members named ../escape and /etc/imagefs-abs
  truncate                 the first half of the archive's bytes
  truncate-tail            manifest.json moved first, then the archive cut at 60%
  corrupt-manifest         manifest.json cut in the middle of its JSON
  big-config MIB           one image whose config is MIB MiB of valid JSON
  duplicate-tag TAG        TAG given to the first two images of manifest.json
  big-layer GIB            the archive with a GIB GiB layer member first (sparse on disk)
  layout-big-config MIB    (IN is an OCI layout directory, changed in place; OUT is
                           ignored) one more image, localhost/big:1, whose config is
                           MIB MiB of valid JSON; prints its ID
"""
import hashlib
import io
import json
import sys
import tarfile


def copy_members(src, dst, skip=(), replace=None):
    for m in src.getmembers():
        if m.name in skip:
            continue
        data = src.extractfile(m).read() if m.isfile() else None
        if replace and m.name in replace:
            data = replace[m.name]
            m.size = len(data)
        dst.addfile(m, io.BytesIO(data) if data is not None else None)


def add(dst, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    dst.addfile(info, io.BytesIO(data))


def main():
    case, src_path, out_path = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    if case == "truncate":
        data = open(src_path, "rb").read()
        open(out_path, "wb").write(data[: len(data) // 2])
        return
    if case == "big-config":
        mib = int(arg)
        pad = "x" * (mib << 20)
        config = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                             "os": "linux", "config": {"Labels": {"pad": pad}},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        hexd = hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": hexd + ".json", "RepoTags": ["localhost/big:1"],
                                "Layers": []}]).encode()
        with tarfile.open(out_path, "w", format=tarfile.GNU_FORMAT) as dst:
            add(dst, hexd + ".json", config)
            add(dst, "manifest.json", manifest)
        print("sha256:" + hexd)
        return
    if case == "layout-big-config":
        mib = int(arg)
        pad = "x" * (mib << 20)
        config = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                             "os": "linux", "config": {"Labels": {"pad": pad}},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        chex = hashlib.sha256(config).hexdigest()
        manifest = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": "sha256:" + chex, "size": len(config)},
                               "layers": []}).encode()
        mhex = hashlib.sha256(manifest).hexdigest()
        for hexd, data in ((chex, config), (mhex, manifest)):
            open(f"{src_path}/blobs/sha256/{hexd}", "wb").write(data)
        index = json.load(open(f"{src_path}/index.json"))
        index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": "sha256:" + mhex, "size": len(manifest),
                                   "annotations": {"org.opencontainers.image.ref.name": "localhost/big:1"}})
        json.dump(index, open(f"{src_path}/index.json", "w"))
        print("sha256:" + chex)
        return
    if case == "big-layer":
        size = int(arg) << 30
        with open(out_path, "wb") as raw:
            info = tarfile.TarInfo("0000big/layer.tar")
            info.size = size
            raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
            raw.seek(size, io.SEEK_CUR)  # a hole: the layer's bytes cost no disk
            with tarfile.open(src_path) as src, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as dst:
                copy_members(src, dst)
        return
    with tarfile.open(src_path) as src, tarfile.open(out_path, "w", format=tarfile.GNU_FORMAT) as dst:
        if case == "drop-member":
            copy_members(src, dst, skip=(arg,))
        elif case == "tamper-member":
            data = bytearray(src.extractfile(arg).read())
            data[-2:-1] = b" " if data[-2:-1] != b" " else b"\t"
            copy_members(src, dst, replace={arg: bytes(data)})
        elif case == "unsafe-names":
            add(dst, "../escape", b"outside\n")
            add(dst, "/etc/imagefs-abs", b"absolute\n")
            copy_members(src, dst)
        elif case == "truncate-tail":
            data = src.extractfile("manifest.json").read()
            add(dst, "manifest.json", data)
            copy_members(src, dst, skip=("manifest.json",))
        elif case == "duplicate-tag":
            entries = json.loads(src.extractfile("manifest.json").read())
            for e in entries[:2]:
                e["RepoTags"] = (e.get("RepoTags") or []) + [arg]
            copy_members(src, dst, replace={"manifest.json": json.dumps(entries).encode()})
        elif case == "corrupt-manifest":
            data = src.extractfile("manifest.json").read()
            copy_members(src, dst, replace={"manifest.json": data[: len(data) // 2]})
        else:
            sys.exit("unknown case " + case)


if __name__ == "__main__":
    main()
    if sys.argv[1] == "truncate-tail":
        out = sys.argv[3]
        data = open(out, "rb").read()
        open(out, "wb").write(data[: len(data) * 6 // 10])
