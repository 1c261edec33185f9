#!/usr/bin/env python3
"""Hostile stores for the trust tests (issue 14): inputs no real tool makes, each one
a small file that claims something huge or repeats something many times. Built by
hand here, byte by byte where the format needs it.

usage: hostile.py CASE OUT [ARG]
  pax-huge OUT.tar GIB          manifest.json, then a PAX header claiming GIB GiB (a hole)
  longname-huge OUT.tar GIB     the same with a GNU long-name header
  pax-huge-gz OUT.tar.gz MIB    pax-huge claiming 1 GiB with MIB MiB of zeros behind it,
                                gzip-compressed
  many-members-gz OUT.tar.gz N  N empty members (and manifest.json first), gzip-compressed
  manifest-million OUT.tar N    manifest.json of N tiny entries naming one config (c.json)
  config-many-entries OUT.tar N one 1 MiB config named by N manifest.json entries
  layout-many-entries DIR N     an OCI layout of N index entries naming one 4 MiB manifest
  big-sparse-config OUT.tar GIB a docker-archive whose config is GIB GiB (a hole)
  index-chain DIR DEPTH         an OCI layout: two tagged images, and an entry whose
                                index nests DEPTH indexes deep
  meta-shared DIR LEVELS        a containerd root whose meta.db's root tree has LEVELS
                                levels of branch pages, each naming the next 200 times
  docker-root-devices DIR       a Docker data root of one image, localhost/dev:1, whose
                                layer size file is a character device (/dev/zero's)
Prints what the test needs (an image ID) on stdout.
"""
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile

BLOCK = 512
CONFIG = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                     "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def header(name, size, typeflag=b"0"):
    """One GNU header block, checksummed."""
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:107] = b"0000644"
    h[108:115] = b"0000000"
    h[116:123] = b"0000000"
    if size < 8 ** 11:
        h[124:135] = b"%011o" % size
    else:
        h[124] = 0x80
        h[128:136] = struct.pack(">Q", size)
    h[136:147] = b"00000000000"
    h[156:157] = typeflag
    h[257:265] = b"ustar  \0"
    h[148:156] = b" " * 8
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h)


def member(name, data, typeflag=b"0"):
    pad = (-len(data)) % BLOCK
    return header(name, len(data), typeflag) + data + b"\0" * pad


def docker_archive(entries, members):
    """manifest.json first, then the members."""
    out = member(b"manifest.json", json.dumps(entries).encode())
    for name, data in members:
        out += member(name, data)
    return out


def sha(b):
    return hashlib.sha256(b).hexdigest()


def huge_extension(typeflag, gib):
    cid = sha(CONFIG)
    head = docker_archive([{"Config": cid + ".json", "RepoTags": ["localhost/first:1"],
                            "Layers": []}], [((cid + ".json").encode(), CONFIG)])
    return head, header(b"././@LongLink" if typeflag == b"L" else b"PaxHeaders/huge",
                        gib << 30, typeflag), cid


def write_sparse(path, prefix, hole):
    with open(path, "wb") as f:
        f.write(prefix)
        f.truncate(len(prefix) + hole)


def write_layout(d, blobs, entries):
    os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
    for data in blobs:
        open(f"{d}/blobs/sha256/{sha(data)}", "wb").write(data)
    open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
    json.dump({"schemaVersion": 2, "manifests": entries}, open(f"{d}/index.json", "w"))


def manifest_of(config, pad=0):
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + sha(config), "size": len(config)},
         "layers": []}
    if pad:
        m["annotations"] = {"pad": "x" * pad}
    return json.dumps(m).encode()


def entry(data, mt, name=None):
    e = {"mediaType": mt, "digest": "sha256:" + sha(data), "size": len(data)}
    if name:
        e["annotations"] = {"org.opencontainers.image.ref.name": name}
    return e


MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"


def bolt_meta(page_size, root, pgid, txid):
    m = bytearray(64)
    struct.pack_into("<IIII", m, 0, 0xED0CDAED, 2, page_size, 0)
    struct.pack_into("<QQ", m, 16, root, 0)  # root bucket: root page, sequence
    struct.pack_into("<QQQ", m, 32, 0, pgid, txid)  # freelist, pgid, txid
    h = 0xcbf29ce484222325
    for b in m[:56]:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    struct.pack_into("<Q", m, 56, h)
    p = bytearray(page_size)
    struct.pack_into("<QHHI", p, 0, txid % 2, 0x04, 0, 0)
    p[16:80] = m
    return bytes(p)


def bolt_branch(page_size, pid, child, count):
    p = bytearray(page_size)
    struct.pack_into("<QHHI", p, 0, pid, 0x01, count, 0)
    for i in range(count):
        struct.pack_into("<IIQ", p, 16 + i * 16, 0, 0, child)
    return bytes(p)


def bolt_leaf(page_size, pid):
    p = bytearray(page_size)
    struct.pack_into("<QHHI", p, 0, pid, 0x02, 1, 0)
    struct.pack_into("<IIII", p, 16, 0, 16, 1, 1)
    p[32:34] = b"kv"
    return bytes(p)


def main():
    case, out = sys.argv[1:3]
    arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if case in ("pax-huge", "longname-huge", "pax-huge-gz"):
        gib = 1 if case == "pax-huge-gz" else arg
        head, ext, cid = huge_extension(b"L" if case == "longname-huge" else b"x", gib)
        if case == "pax-huge-gz":
            with gzip.open(out, "wb", compresslevel=6) as g:
                g.write(head + ext)
                zeros = b"\0" * (1 << 20)
                for _ in range(arg):
                    g.write(zeros)
        else:
            write_sparse(out, head + ext, arg << 30)
        print("sha256:" + cid)
    elif case == "many-members-gz":
        cid = sha(CONFIG)
        with gzip.open(out, "wb", compresslevel=1) as g:
            g.write(docker_archive([{"Config": cid + ".json", "RepoTags": ["localhost/first:1"],
                                     "Layers": []}], [((cid + ".json").encode(), CONFIG)]))
            empty = header(b"e", 0)
            for _ in range(arg):
                g.write(empty)
            g.write(b"\0" * 1024)
        print("sha256:" + cid)
    elif case == "manifest-million":
        # as small as entries get: about 19 bytes each
        entries = [{"Config": "c.json"}] * arg
        entries[0] = {"Config": "c.json", "RepoTags": ["localhost/first:1"]}
        open(out, "wb").write(docker_archive(entries, [(b"c.json", CONFIG)]))
        print("sha256:" + sha(CONFIG))
    elif case == "config-many-entries":
        config = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                             "os": "linux", "config": {"Labels": {"pad": "x" * (1 << 20)}}}).encode()
        cid = sha(config)
        entries = [{"Config": cid + ".json", "RepoTags": [f"localhost/many:{i}"]}
                   for i in range(arg)]
        open(out, "wb").write(docker_archive(entries, [((cid + ".json").encode(), config)]))
        print("sha256:" + cid)
    elif case == "layout-many-entries":
        manifest = manifest_of(CONFIG, pad=(4 << 20) - 4096)
        one = entry(manifest, MT_MANIFEST)
        entries = [dict(one, annotations={"org.opencontainers.image.ref.name": f"localhost/many:{i}"})
                   for i in range(arg)]
        write_layout(out, [CONFIG, manifest], entries)
        print("sha256:" + sha(CONFIG))
    elif case == "big-sparse-config":
        cid = "0" * 64  # claimed; the bytes are a hole and never hash to it
        head = member(b"manifest.json", json.dumps(
            [{"Config": cid + ".json", "RepoTags": ["localhost/huge:1"], "Layers": []}]).encode())
        write_sparse(out, head + header((cid + ".json").encode(), arg << 30), (arg << 30) + 1024)
        print("sha256:" + cid)
    elif case == "index-chain":
        a = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                        "os": "linux", "v": "a"}).encode()
        b = json.dumps({"created": "2024-01-02T00:00:00Z", "architecture": "amd64",
                        "os": "linux", "v": "b"}).encode()
        ma, mb = manifest_of(a), manifest_of(b)
        blobs = [a, b, ma, mb]
        inner, mt = mb, MT_MANIFEST
        for _ in range(arg):
            idx = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                              "manifests": [entry(inner, mt)]}).encode()
            blobs.append(idx)
            inner, mt = idx, MT_INDEX
        write_layout(out, blobs, [entry(ma, MT_MANIFEST, "localhost/a:1"),
                                  entry(mb, MT_MANIFEST, "localhost/b:1"),
                                  entry(inner, mt, "localhost/deep:1")])
        print("sha256:" + sha(a))
    elif case == "meta-shared":
        ps = 4096
        levels = arg
        pages = [bolt_meta(ps, 2, 3 + levels, 4), bolt_meta(ps, 2, 3 + levels, 3)]
        for lv in range(levels):
            pages.append(bolt_branch(ps, 2 + lv, 3 + lv, 200))
        pages.append(bolt_leaf(ps, 2 + levels))
        os.makedirs(f"{out}/io.containerd.metadata.v1.bolt", exist_ok=True)
        os.makedirs(f"{out}/io.containerd.content.v1.content/blobs/sha256", exist_ok=True)
        open(f"{out}/io.containerd.metadata.v1.bolt/meta.db", "wb").write(b"".join(pages))
    elif case == "docker-root-devices":
        diff = "sha256:" + "a" * 64
        config = json.dumps({"created": "2024-01-01T00:00:00Z", "architecture": "amd64",
                             "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
        drv = f"{out}/image/vfs"
        os.makedirs(f"{drv}/imagedb/content/sha256", exist_ok=True)
        os.makedirs(f"{drv}/layerdb/sha256/{'a' * 64}", exist_ok=True)
        os.makedirs(f"{out}/containers", exist_ok=True)
        open(f"{drv}/imagedb/content/sha256/{sha(config)}", "wb").write(config)
        os.mknod(f"{drv}/layerdb/sha256/{'a' * 64}/size", 0o644 | 0o020000, os.makedev(1, 5))
        json.dump({"Repositories": {"localhost/dev": {"localhost/dev:1": "sha256:" + sha(config)}}},
                  open(f"{drv}/repositories.json", "w"))
        print("sha256:" + sha(config))
    else:
        sys.exit("unknown case " + case)


if __name__ == "__main__":
    main()
