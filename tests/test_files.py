"""Filesystem helpers on stores that behave like S3/GCS, not like a local disk."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from factory.io import files

fsspec = pytest.importorskip("fsspec")


class ObjectStoreHandler(pafs.FSSpecHandler):
    """A local folder seen through pyarrow the way an object store behaves: moving a folder is
    refused, as pyarrow's S3 and GCS filesystems refuse it."""

    def move(self, src, dest):
        if self.fs.isdir(src):
            raise OSError(f"object stores cannot move a directory: {src}")
        super().move(src, dest)


@pytest.fixture
def object_store(tmp_path, monkeypatch):
    """Paths `store://x` are `tmp_path/x` on an ObjectStoreHandler filesystem."""
    # Paths inside it are relative to its root, as a bucket's keys are.
    store = pafs.SubTreeFileSystem(str(tmp_path), pafs.PyFileSystem(ObjectStoreHandler(fsspec.filesystem("file"))))
    local_resolve = files.resolve

    def resolve(path):
        if path.startswith("store://"):
            return store, path[len("store://") :]
        return local_resolve(path)

    monkeypatch.setattr(files, "has_scheme", lambda p: "://" in p and not p.startswith("file://"))
    monkeypatch.setattr(files, "resolve", resolve)
    return tmp_path


def test_the_handler_refuses_to_move_a_folder_like_s3(object_store):
    (object_store / "a").mkdir()
    fs, a = files.resolve("store://a")
    with pytest.raises(OSError, match="cannot move a directory"):
        fs.move(a, "b")


def test_move_dir_moves_every_file_where_folders_cannot_move(object_store):
    want = {"part-1.parquet": b"one", "sub/part-2.parquet": b"two", "llava.json": b"[]"}
    for rel, data in want.items():
        files.write_bytes_atomic(f"store://staging/{rel}", data)
    files.move_dir("store://staging", "store://dataset")
    got = {os.path.relpath(os.path.join(d, f), object_store / "dataset"): open(os.path.join(d, f), "rb").read()
           for d, _, fs in os.walk(object_store / "dataset") for f in fs}
    assert got == want
    assert not (object_store / "staging").exists()


def test_move_dir_on_a_local_disk_renames(tmp_path):
    files.write_bytes_atomic(str(tmp_path / "staging" / "x.parquet"), b"x")
    inode = os.stat(tmp_path / "staging" / "x.parquet").st_ino
    files.move_dir(str(tmp_path / "staging"), str(tmp_path / "dataset"))
    assert os.stat(tmp_path / "dataset" / "x.parquet").st_ino == inode  # one rename, not a copy
    assert not (tmp_path / "staging").exists()


@pytest.mark.parametrize("pattern", ["*.jsonl", "captions/*.jsonl", "captions/**/*.jsonl", "captions/[ab]*.jsonl",
                                     "**/x.jsonl", "captions/*/*.jsonl"])
def test_uri_globs_match_what_local_globs_match(object_store, pattern):
    """An object store lists recursively; `*` must still stop at '/', as Python's glob does."""
    import glob

    for rel in ("captions/a.jsonl", "captions/b.jsonl", "captions/old/x.jsonl", "captions/old/deeper/x.jsonl", "top.jsonl"):
        files.write_bytes_atomic(f"store://bucket/{rel}", b"{}\n")
    local = sorted(os.path.relpath(m, object_store / "bucket") for m in glob.glob(str(object_store / "bucket" / pattern), recursive=True))
    found = sorted(p[len("store://bucket/") :] for p in files.expand_input(f"store://bucket/{pattern}"))
    assert found == local
    assert found  # each pattern matches something


def test_a_uri_glob_keeps_the_query_of_the_pattern(object_store, monkeypatch):
    files.write_bytes_atomic("store://c/a.jsonl", b"{}\n")
    store_resolve = files.resolve
    monkeypatch.setattr(files, "resolve", lambda p: store_resolve(p.split("?")[0]))  # as pyarrow's from_uri drops it
    assert files.expand_input("store://c/*.jsonl?endpoint_override=localhost:9000") == ["store://c/a.jsonl?endpoint_override=localhost:9000"]
