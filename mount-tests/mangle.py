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
  lower-keys               manifest.json's keys as jib wrote them: config, repoTags, layers
  misname-config TAG       the config of the image tagged TAG renamed to a hash its
                           bytes do not have (manifest.json follows); prints the new name
  dot-prefix               every member named ./NAME, and a ./ directory first, as
                           `tar -C dir -cf x .` writes them
  layout-drop-arch ARCH    (IN is an OCI layout directory, changed in place) the
                           entries of ARCH taken out of every nested index; and two
                           entries more in index.json: localhost/whoami/gone:1 naming
                           a manifest that is not there, and localhost/whoami/sig:1
                           an artifact (a media type that is no image); prints the
                           new digests of the changed indexes, one per line
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
    if case == "layout-drop-arch":
        blobs = f"{src_path}/blobs/sha256"
        index = json.load(open(f"{src_path}/index.json"))
        for entry in index["manifests"]:
            if "index" not in entry.get("mediaType", "") and "list" not in entry.get("mediaType", ""):
                continue
            nested = json.load(open(f"{blobs}/{entry['digest'].split(':')[1]}"))
            nested["manifests"] = [m for m in nested["manifests"]
                                   if m.get("platform", {}).get("architecture") != arg]
            data = json.dumps(nested).encode()
            hexd = hashlib.sha256(data).hexdigest()
            open(f"{blobs}/{hexd}", "wb").write(data)
            entry["digest"], entry["size"] = "sha256:" + hexd, len(data)
            print("sha256:" + hexd)
        sig = json.dumps({"signed": "nothing"}).encode()
        sig_hex = hashlib.sha256(sig).hexdigest()
        open(f"{blobs}/{sig_hex}", "wb").write(sig)
        index["manifests"] += [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": "sha256:" + "e" * 64, "size": 500,
             "annotations": {"org.opencontainers.image.ref.name": "localhost/whoami/gone:1"}},
            {"mediaType": "application/vnd.example.signature.v1+json",
             "digest": "sha256:" + sig_hex, "size": len(sig),
             "annotations": {"org.opencontainers.image.ref.name": "localhost/whoami/sig:1"}},
        ]
        json.dump(index, open(f"{src_path}/index.json", "w"))
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
        elif case == "lower-keys":
            entries = json.loads(src.extractfile("manifest.json").read())
            keys = {"Config": "config", "RepoTags": "repoTags", "Layers": "layers"}
            entries = [{keys.get(k, k): v for k, v in e.items()} for e in entries]
            copy_members(src, dst, replace={"manifest.json": json.dumps(entries).encode()})
        elif case == "misname-config":
            entries = json.loads(src.extractfile("manifest.json").read())
            entry = next(e for e in entries if arg in (e.get("RepoTags") or []))
            old = entry["Config"]
            new = hashlib.sha256(b"not these bytes").hexdigest() + ".json"
            entry["Config"] = new
            for m in src.getmembers():
                data = src.extractfile(m).read() if m.isfile() else None
                if m.name == "manifest.json":
                    data = json.dumps(entries).encode()
                    m.size = len(data)
                if m.name == old:
                    m.name = new
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
            print(new)
        elif case == "dot-prefix":
            root = tarfile.TarInfo("./")
            root.type = tarfile.DIRTYPE
            root.mode = 0o755
            dst.addfile(root)
            for m in src.getmembers():
                data = src.extractfile(m).read() if m.isfile() else None
                m.name = "./" + m.name
                if m.issym() or m.islnk():
                    # hard links name members: those are ./-prefixed too
                    if m.islnk():
                        m.linkname = "./" + m.linkname
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
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
