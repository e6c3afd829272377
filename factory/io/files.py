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
import pyarrow.dataset as pads
import pyarrow.parquet as pq


def has_scheme(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if has_scheme(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except pa.ArrowInvalid as exc:  # a scheme or query pyarrow does not know: the user's to fix, not a bug
            raise ValueError(f"{path}: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(local_path(path))


def local_path(path: str) -> str:
    """A local path as the file system takes it: without file://, with ~ expanded."""
    return os.path.expanduser(path[len("file://") :] if path.startswith("file://") else path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def size(path: str) -> int:
    fs, p = resolve(path)
    return fs.get_file_info(p).size or 0


def is_hidden(name: str) -> bool:
    # pyarrow.dataset and `datasets` skip these, so staging files never look like data.
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.startswith("_")


def list_files(directory: str, suffix: str = "") -> list[str]:
    """Visible files below `directory` (sorted), as paths/URIs the same shape as `directory`."""
    return list(file_sizes(directory, suffix))


def file_sizes(directory: str, suffix: str = "") -> dict[str, int]:
    """{path: bytes} of the visible files below `directory`, from one listing (not a request per file)."""
    fs, p = resolve(directory)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return {}
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        if info.type == pafs.FileType.File and not is_hidden(info.base_name) and info.path.endswith(suffix):
            out[join(directory, info.path[len(p) :].lstrip("/"))] = info.size or 0
    return dict(sorted(out.items()))


def parquet_dataset(paths: list[str], schema: pa.Schema | None = None):
    """The Parquet files `paths` (all on one filesystem, at least one) as one pyarrow dataset, in
    that order (its column "__fragment_index" says which of `paths` a row came from). Hive-style
    `key=value` folders in the paths add no columns. With `schema`, a column a file lacks (written
    before it existed) reads as nulls."""
    fs, _ = resolve(paths[0])
    return pads.dataset([resolve(p)[1] for p in paths], format="parquet", filesystem=fs, partitioning=None, schema=schema)


def read_parquet_files(paths: list[str], columns: list[str], filter=None, schema: pa.Schema | None = None) -> pa.Table:
    """`columns` of the Parquet files `paths` as one table, rows matching the pyarrow.dataset
    expression `filter` (see parquet_dataset)."""
    return parquet_dataset(paths, schema).to_table(columns=columns, filter=filter)


def read_parquet_dir(directory: str, columns: list[str], filter=None, schema: pa.Schema | None = None) -> pa.Table | None:
    """`columns` of the visible Parquet files below `directory` as one table (rows matching the
    pyarrow.dataset expression `filter`), or None when there are no such files."""
    paths = list_files(directory, ".parquet")
    return read_parquet_files(paths, columns, filter, schema) if paths else None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`'s columns and types; a column it lacks (an older file) comes as nulls."""
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def expand_input(pattern: str) -> list[str]:
    """Files named by a path, a directory or a glob, local or URI, sorted; [] when none."""
    if has_scheme(pattern):
        fs, p = resolve(pattern)
        if any(c in p for c in "*?["):
            parts = p.split("/")
            fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
            root = "/".join(parts[:fixed])
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            # Each match keeps the pattern's scheme and its query (?endpoint_override=..., say).
            scheme, query = pattern.split("://", 1)[0], pattern.split("://", 1)[1].partition("?")[1:]
            return sorted(
                f"{scheme}://{i.path}{''.join(query)}" for i in infos if i.type == pafs.FileType.File and glob_match(i.path, p)
            )
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            return list_files(pattern)
        return [pattern] if info.type == pafs.FileType.File else []
    path = local_path(pattern)
    if os.path.isdir(path):
        return list_files(path)
    matches = sorted(m for m in glob.glob(path, recursive=True) if os.path.isfile(m))
    return [os.path.abspath(m) for m in matches]


def glob_match(path: str, pattern: str) -> bool:
    """`glob`'s rules on '/'-separated paths: `*`, `?` and `[...]` stay within one folder level,
    `**` spans any number of levels (an object store lists recursively, so fnmatch alone would
    let `captions/*.jsonl` take `captions/old/x.jsonl` too)."""
    import fnmatch

    def match(ps: list[str], qs: list[str]) -> bool:
        if not qs:
            return not ps
        if qs[0] == "**":
            return any(match(ps[i:], qs[1:]) for i in range(len(ps) + 1))
        return bool(ps) and fnmatch.fnmatchcase(ps[0], qs[0]) and match(ps[1:], qs[1:])

    return match(path.strip("/").split("/"), pattern.strip("/").split("/"))


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p, compression=None) as f:  # the bytes as stored: no guessing by extension
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


def write_parquet_atomic(path: str, table: pa.Table, compression: str = "zstd", make_parent: bool = True,
                         row_group_size: int | None = None) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, row_group_size=row_group_size)
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


def move_dir(src: str, dst: str) -> None:
    """Rename folder `src` to `dst` (which must not exist).

    On a local disk one atomic rename. Object stores (S3, GCS) cannot move a folder, so there each
    file moves on its own and `src` goes last: a crash midway leaves files in both, and the
    caller's resume redoes the whole step (it only trusts `dst` once its manifest says so).
    """
    fs, s = resolve(src)
    _, d = resolve(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(s, d)
        return
    fs.create_dir(d, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(s, recursive=True)):
        if info.type == pafs.FileType.File:
            target = d + info.path[len(s) :]
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.move(info.path, target)
    fs.delete_dir(s)
