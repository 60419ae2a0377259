"""Write a one-layer container image as a docker-archive tar (what `ctr images import` and `docker load` read)
from files of this machine: no registry, no daemon, no base image. Used for the images of the local node
(pause, CoreDNS, a busybox for tests); `tests/node.py` imports them into containerd.

    python -m hack.local_image --out pause.tar --tag registry.k8s.io/pause:3.10.2 \\
        --file pause:/pause --user 65535:65535 --entrypoint /pause

The archive is reproducible: fixed mtimes, root-owned entries, sorted paths.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path, PurePosixPath


def _layer(files: dict[str, tuple[bytes, int]], symlinks: dict[str, str], dirs: list[str]) -> bytes:
    """A tar of `files` (path -> (content, mode)), `symlinks` (path -> target) and `dirs`, with every parent."""
    entries: dict[str, tarfile.TarInfo] = {}
    payload: dict[str, bytes] = {}

    def parents(path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents):
            name = str(parent).lstrip("/")
            if name and name not in entries:
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                entries[name] = info

    for path in dirs:
        parents(path + "/x")
        if path.strip("/") == "tmp":
            entries["tmp"].mode = 0o1777
    for path, (content, mode) in files.items():
        parents(path)
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(content), mode
        entries[info.name], payload[info.name] = info, content
    for path, target in symlinks.items():
        parents(path)
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        entries[info.name] = info
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            info = entries[name]
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(payload[name]) if name in payload else None)
    return buf.getvalue()


def docker_archive(tag: str, layer: bytes, *, entrypoint: list[str], cmd: list[str] | None = None,
                   user: str = "", env: list[str] | None = None, workdir: str = "/") -> bytes:
    """A docker-archive (manifest.json, the config blob, one layer) of `layer` tagged `tag`."""
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "User": user, "WorkingDir": workdir,
                   "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/local_image.py"}],
    }
    config_blob = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_blob).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_digest}/layer.tar"]}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((f"{layer_digest}/layer.tar", layer), (config_name, config_blob),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tag", required=True, help="image name, e.g. registry.k8s.io/pause:3.10.2")
    parser.add_argument("--file", action="append", default=[], metavar="SRC:DEST", help="add a file (mode kept)")
    parser.add_argument("--symlink", action="append", default=[], metavar="PATH=TARGET")
    parser.add_argument("--dir", action="append", default=[], metavar="PATH", help="add an empty directory")
    parser.add_argument("--entrypoint", nargs="+", required=True)
    parser.add_argument("--cmd", nargs="*")
    parser.add_argument("--user", default="")
    args = parser.parse_args(argv)
    files = {}
    for spec in args.file:
        src, dest = spec.split(":", 1)
        path = Path(src)
        files[dest] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    symlinks = dict(spec.split("=", 1) for spec in args.symlink)
    layer = _layer(files, symlinks, args.dir)
    args.out.write_bytes(docker_archive(args.tag, layer, entrypoint=args.entrypoint, cmd=args.cmd, user=args.user))
    return 0


if __name__ == "__main__":
    sys.exit(main())
