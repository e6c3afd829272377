"""Filesystem access for local paths and URIs (s3://, gs://, ...), and writes that never half-land."""
from __future__ import annotations

import glob
import io
import json
import os
import socket
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def has_scheme(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if has_scheme(path):
        return pafs.FileSystem.from_uri(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_hidden(name: str) -> bool:
    # pyarrow.dataset and `datasets` skip these, so staging files never look like data.
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.startswith("_")


def list_files(directory: str, suffix: str = "") -> list[str]:
    """Visible files below `directory` (sorted), as paths/URIs the same shape as `directory`."""
    fs, p = resolve(directory)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    out = []
    for info in infos:
        if info.type == pafs.FileType.File and not is_hidden(info.base_name) and info.path.endswith(suffix):
            rel = info.path[len(p) :].lstrip("/")
            out.append(join(directory, rel))
    return sorted(out)


def read_parquet_dir(directory: str, columns: list[str], filter=None) -> pa.Table | None:
    """`columns` of the visible Parquet files below `directory` as one table (rows matching the
    pyarrow.dataset expression `filter`), or None when there are no such files."""
    import pyarrow.dataset as pads

    paths = list_files(directory, ".parquet")
    if not paths:
        return None
    fs, _ = resolve(directory)
    return pads.dataset([resolve(p)[1] for p in paths], format="parquet", filesystem=fs).to_table(columns=columns, filter=filter)


def expand_input(pattern: str) -> list[str]:
    """Files named by a path, a directory or a glob, local or URI, sorted; [] when none."""
    if has_scheme(pattern):
        fs, p = resolve(pattern)
        if any(c in p for c in "*?["):
            import fnmatch

            root = p.split("*")[0].rsplit("/", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
            scheme = pattern.split("://", 1)[0]
            return sorted(
                f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, p)
            )
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            return list_files(pattern)
        return [pattern] if info.type == pafs.FileType.File else []
    path = os.path.expanduser(pattern)
    if os.path.isdir(path):
        return list_files(path)
    matches = sorted(m for m in glob.glob(path, recursive=True) if os.path.isfile(m))
    return [os.path.abspath(m) for m in matches]


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


class NotSharedError(FileNotFoundError):
    """A worker was asked to write into a local folder that is not there on its node."""


def write_bytes_atomic(path: str, data: bytes, make_parent: bool = True) -> None:
    """Write beside the target under a hidden name, then rename: readers see all or nothing.

    `make_parent=False` is for workers writing into a folder the driver made: a local folder that
    is missing on this node means the node does not share the run's storage (a node the autoscaler
    added without the NFS mount, say). Making the folder there would put the rows on that node's
    own disk, where the run never sees them, so the write fails instead.
    """
    fs, p = resolve(path)
    parent, name = p.rsplit("/", 1)
    if make_parent:
        fs.create_dir(parent, recursive=True)
    elif isinstance(fs, pafs.LocalFileSystem) and not os.path.isdir(parent):
        raise NotSharedError(
            f"{parent} is missing on host {socket.gethostname()}, though the run made it: this node does not "
            "share the run's storage; mount it there, or use a URI output (s3://, gs://)"
        )
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, p)


def write_json_atomic(path: str, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_parquet_atomic(path: str, table: pa.Table, compression: str = "zstd", make_parent: bool = True) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    write_bytes_atomic(path, buf.getvalue(), make_parent)


def remove_stale_temp(directory: str) -> int:
    """Delete '.*.tmp' leftovers of a killed run; returns how many."""
    fs, p = resolve(directory)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return 0
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
            fs.delete_file(info.path)
            n += 1
    return n


def delete_file(path: str) -> None:
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def delete_dir(path: str) -> None:
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def move(src: str, dst: str) -> None:
    fs, s = resolve(src)
    _, d = resolve(dst)
    fs.move(s, d)
