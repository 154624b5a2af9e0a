"""Write a one-layer container image as a docker-archive tarball, reproducibly (stdlib only).

    ociarchive.py ROOTFS OUT.tar --tag podmirror:dev --config CONFIG.json [--epoch N] [--gzip]

``ROOTFS`` becomes the single layer: entries in sorted order, owners numeric, no user or group
names, mtimes clamped to ``--epoch`` (``SOURCE_DATE_EPOCH``), no xattrs; the contents of ``dev``,
``proc``, ``sys``, ``run`` and ``tmp`` are left out (the runtime provides them), the directories stay.
``CONFIG.json`` is the image's runtime ``config`` (User, Env, Cmd, ...). The same inputs give the
same bytes, hence the same image ID. ``ctr images import`` (containerd) and ``docker load`` read
the result; containerd names ``podmirror:dev`` ``docker.io/library/podmirror:dev``. With ``--gzip``
the layer is stored compressed (gzip, no name, mtime 0: still reproducible), as a registry would hold
it; containerd recognises the compression when it imports.
Prints the image ID (the config's sha256), the layer's size unpacked and as stored, in bytes.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile

RUNTIME_DIRS = ("dev", "proc", "sys", "run", "tmp")


def walk_sorted(root: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def visit(rel: str, path: str) -> None:
        for name in sorted(os.listdir(path)):
            child_rel = f"{rel}/{name}" if rel else name
            child = os.path.join(path, name)
            out.append((child_rel, child))
            if stat.S_ISDIR(os.lstat(child).st_mode) and child_rel not in RUNTIME_DIRS:
                visit(child_rel, child)

    visit("", root)
    return out


def write_layer(root: str, out, epoch: int) -> None:
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in walk_sorted(root):
            st = os.lstat(path)
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
            info.mtime = min(int(st.st_mtime), epoch)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
                tar.addfile(info)
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = name
                info.size = st.st_size
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            # sockets are not archived


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    tar.addfile(info, io.BytesIO(data))


def build(root: str, out_path: str, tag: str, runtime_config: dict, epoch: int,
          compress: bool = False) -> tuple[str, int, int]:
    directory = os.path.dirname(os.path.abspath(out_path))
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".layer-", suffix=".tar", delete=False) as layer:
        layer_path = layer.name
    try:
        with open(layer_path, "wb") as handle:
            write_layer(root, handle, epoch)
        diff_id = _sha256_file(layer_path)
        unpacked = os.path.getsize(layer_path)
        if compress:
            with open(layer_path, "rb") as src, open(layer_path + ".gz", "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(layer_path + ".gz", layer_path)
        size = os.path.getsize(layer_path)
        created = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
        config = {
            "architecture": "amd64", "os": "linux",
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": runtime_config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "created_by": "podmirror scripts/lib/ociarchive.py"}],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        image_id = hashlib.sha256(config_bytes).hexdigest()
        manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
        tmp_out = out_path + ".tmp"
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, f"{image_id}.json", config_bytes, epoch)
            info = tarfile.TarInfo(f"{diff_id}/layer.tar")
            info.size, info.mtime, info.mode = size, epoch, 0o644
            with open(layer_path, "rb") as handle:
                tar.addfile(info, handle)
            _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode(), epoch)
        os.replace(tmp_out, out_path)
        return image_id, unpacked, size
    finally:
        for path in (layer_path, layer_path + ".gz"):
            if os.path.exists(path):
                os.unlink(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--config", required=True, help="JSON file: the image's runtime config")
    parser.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    parser.add_argument("--gzip", action="store_true", help="store the layer gzip-compressed")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.rootfs):
        print(f"ociarchive: rootfs {args.rootfs!r} is not a directory", file=sys.stderr)
        return 2
    with open(args.config) as handle:
        runtime_config = json.load(handle)
    image_id, unpacked, stored = build(args.rootfs, args.out, args.tag, runtime_config, args.epoch, args.gzip)
    print(f"sha256:{image_id} {unpacked} {stored}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
