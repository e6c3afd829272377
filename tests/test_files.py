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


def test_a_uri_with_a_query_has_the_format_of_its_path():
    """MinIO and R2 users pass pyarrow's options in the query; the format comes from the path."""
    from factory.io.read import compression, input_format

    for uri, fmt in [("s3://bucket/captions.csv?endpoint_override=localhost:9000", "csv"),
                     ("s3://bucket/c.jsonl.gz?endpoint_override=h:9000&scheme=http", "jsonl"),
                     ("gs://b/c.parquet?x=y.txt", "parquet")]:
        assert input_format(uri) == fmt
    assert compression("s3://bucket/c.jsonl.gz?endpoint_override=h:9000") == "gzip"
    assert files.join("s3://b/run?endpoint_override=h:9000", "candidates", "x.parquet") == \
        "s3://b/run/candidates/x.parquet?endpoint_override=h:9000"


@pytest.fixture
def like_pyarrow(object_store, monkeypatch):
    """`store://` URIs that take a user part and a query as pyarrow's from_uri does: both left out of
    the path inside the filesystem."""
    import re

    store_resolve = files.resolve

    def resolve(path):
        if path.startswith("store://"):
            path = re.sub(r"^store://[^/@]*@", "store://", path.split("?")[0])
        return store_resolve(path)

    monkeypatch.setattr(files, "resolve", resolve)
    return object_store


def test_a_uri_glob_keeps_credentials_and_query_on_every_file(like_pyarrow):
    from factory.io.read import list_inputs

    for rel in ("c/a.jsonl", "c/b c.jsonl", "c/sub/d.jsonl"):
        files.write_bytes_atomic(f"store://{rel}", b'{"caption": "A red car on a street."}\n')
    pattern = "store://KEY:SECRET@c/*.jsonl?endpoint_override=localhost:9000"
    assert list_inputs(pattern) == ["store://KEY:SECRET@c/a.jsonl?endpoint_override=localhost:9000",
                                    "store://KEY:SECRET@c/b%20c.jsonl?endpoint_override=localhost:9000"]
    assert list_inputs("store://KEY:SECRET@c?endpoint_override=localhost:9000")[-1] == \
        "store://KEY:SECRET@c/sub/d.jsonl?endpoint_override=localhost:9000"


def test_rows_and_errors_of_a_uri_show_no_credentials(like_pyarrow):
    """The reader opens the real URI; its rows' `source` and its errors show it redacted."""
    from factory import schema as S
    from factory.io.read import InputError, read_caption_file

    files.write_bytes_atomic("store://c/a.jsonl", b'{"caption": "A red car on a street."}\n{bad\n')
    uri = "store://KEY:SECRET@c/a.jsonl?endpoint_override=h:9000&secret_key=SK2"
    rows = read_caption_file(uri, 0).to_pylist()
    assert [r[S.SOURCE] for r in rows] == [f"store://***@c/a.jsonl?endpoint_override=h:9000&secret_key=***:{i}" for i in (1, 2)]
    with pytest.raises(InputError) as err:
        read_caption_file(uri.replace("a.jsonl", "gone.jsonl"), 0)
    assert "SECRET" not in str(err.value) and "SK2" not in str(err.value) and "gone.jsonl" in str(err.value)


def test_an_output_inside_the_input_folder_is_not_input(tmp_path):
    """A resume must not read the first run's report/contact_sheet.png or dataset/*.parquet as captions."""
    from factory.io.read import list_inputs

    (tmp_path / "captions.jsonl").write_text('{"caption": "A red car on a street."}\n')
    out = tmp_path / "runs" / "mine"
    for rel in ("report/contact_sheet.png", "dataset/part-1.parquet", "manifest.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    assert list_inputs(str(tmp_path), exclude=[str(out)]) == [str(tmp_path / "captions.jsonl")]
    assert list_inputs(str(tmp_path / "**"), exclude=["file://" + str(out)]) == [str(tmp_path / "captions.jsonl")]


def test_an_output_inside_a_uri_input_folder_is_not_input(object_store):
    from factory.io.read import list_inputs

    files.write_bytes_atomic("store://b/captions.jsonl", b"{}\n")
    files.write_bytes_atomic("store://b/run/report/contact_sheet.png", b"x")
    assert list_inputs("store://b", exclude=["store://b/run"]) == ["store://b/captions.jsonl"]


def test_a_symlink_loop_reads_each_file_once(tmp_path):
    """A link back to the folder (and a second link to the same file) lists the real file once."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.jsonl").write_text("{}\n")
    (data / "b.jsonl").write_text("{}\n")
    os.symlink(data, data / "sub" / "loop")
    os.symlink(data, data / "again")
    os.symlink(data / "b.jsonl", data / "c.jsonl")
    assert files.expand_input(str(data)) == [str(data / "b.jsonl"), str(data / "sub" / "a.jsonl")]
    assert sorted(map(os.path.realpath, files.expand_input(str(data / "**" / "*.jsonl")))) == \
        [str(data / "b.jsonl"), str(data / "sub" / "a.jsonl")]
