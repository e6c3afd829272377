"""Writer stages make their folder where they are built and then write only into it: a node that
does not see that folder (no shared storage) fails with one line instead of keeping rows on its disk."""
from __future__ import annotations

import io
import shutil
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.curate.judge import VERDICT_LOG, VerdictLog
from factory.io import files
from factory.io.write import CandidateWriter, RejectsSplit


def scored_batch(n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {
        S.ID: np.array([f"id{i}" for i in range(n)], dtype=object),
        S.CAPTION: np.array([f"caption {i}" for i in range(n)], dtype=object),
        S.SAMPLE: np.zeros(n, np.int32),
        S.GENERATOR: np.array(["g"] * n, dtype=object), S.SEED: np.arange(n, dtype=np.int64),
        S.IMAGE: rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
        S.WIDTH: np.full(n, 16, np.int32),
        S.HEIGHT: np.full(n, 16, np.int32),
        S.CLIP_SCORE: rng.random(n),
        S.SSIM: rng.random(n),
        S.SCORE: rng.random(n),
        S.REASON: np.array([""] * n, dtype=object),
    }


def caption_rows() -> pa.Table:
    return pa.table({
        S.ID: ["a", "b"], S.CAPTION: ["a kept caption", "x"], S.SOURCE: ["in.jsonl:1", "in.jsonl:2"],
        S.RAW: ['{"id": "a"}', '{"id": "b"}'],
        S.REASON: [None, "too_short"], S.DETAIL: [None, "1 word"],
        S.VERDICT: [None, "no"], S.ANSWER: [None, "No."],
    })


WRITERS = {
    "candidates": (lambda d: CandidateWriter(d), scored_batch),
    "rejects": (lambda d: RejectsSplit(d), caption_rows),
    "llm_judge": (lambda d: VerdictLog(d), caption_rows),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_writer_makes_its_folder_when_prepared_and_writes_into_it(tmp_path, name):
    make, rows = WRITERS[name]
    directory = tmp_path / "run" / name
    stage = make(str(directory))
    assert not directory.exists()  # building a stage (on the driver, or unpickled on a worker) touches no storage
    stage.prepare()
    assert directory.is_dir() and not list(directory.iterdir())  # made by prepare: the driver
    stage(rows())
    written = files.list_files(str(directory), ".parquet")
    assert len(written) == 1
    table = pq.read_table(written[0])
    expected = {"candidates": S.CANDIDATES, "rejects": S.REJECTS, "llm_judge": VERDICT_LOG}[name]
    assert table.schema.equals(expected, check_metadata=False)
    assert table.num_rows == {"candidates": 3, "rejects": 1, "llm_judge": 1}[name]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_writer_on_a_node_without_the_folder_fails_and_writes_nothing(tmp_path, name):
    make, rows = WRITERS[name]
    run = tmp_path / "run"
    stage = make(str(run / name))
    stage.prepare()  # on the driver, as the engine does
    shutil.rmtree(run)  # as seen from a node that does not mount the run's storage
    with pytest.raises(files.NotSharedError) as err:
        stage.loaded().process(rows())  # as a task runs it
    message = str(err.value)
    assert str(run / name) in message and socket.gethostname() in message and "\n" not in message
    assert not run.exists()  # nothing made on "this node's own disk"
    from factory.errors import user_error

    try:  # the CLI prints it as one line, looking through the exception that wraps it
        raise RuntimeError("a map task failed") from err.value
    except RuntimeError as wrapped:
        assert user_error(wrapped) == message


def test_write_selected_tasks_fail_when_their_folder_is_missing(tmp_path):
    with pytest.raises(files.NotSharedError):
        files.write_parquet_atomic(str(tmp_path / "gone" / "part-0.parquet"), pa.table({"x": [1]}), make_parent=False)
    assert not (tmp_path / "gone").exists()
    files.write_parquet_atomic(str(tmp_path / "made" / "part-0.parquet"), pa.table({"x": [1]}))  # the default makes it
    assert pq.read_table(tmp_path / "made" / "part-0.parquet").column("x").to_pylist() == [1]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_retried_batch_rewrites_its_own_file_and_another_batch_gets_another(tmp_path, name):
    """Files are named by their rows' keys: a task Ray retries overwrites, never duplicates."""
    make, rows = WRITERS[name]
    directory = tmp_path / name
    make(str(directory))(rows())
    make(str(directory))(rows())  # the same batch again, from a new actor
    assert len(files.list_files(str(directory), ".parquet")) == 1
    other = rows()
    if isinstance(other, dict):
        other[S.ID] = np.array([f"other{i}" for i in range(len(other[S.ID]))], dtype=object)
    else:
        other = other.set_column(other.schema.get_field_index(S.SOURCE), S.SOURCE, pa.array(["in.jsonl:7", "in.jsonl:8"]))
    make(str(directory))(other)
    assert len(files.list_files(str(directory), ".parquet")) == 2
    total = sum(pq.read_table(f).num_rows for f in files.list_files(str(directory), ".parquet"))
    assert total == 2 * {"candidates": 3, "rejects": 1, "llm_judge": 1}[name]


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("webp", b"RIFF"), ("jpeg", b"\xff\xd8\xff")])
def test_candidates_store_images_in_the_configured_format(tmp_path, fmt, magic):
    from PIL import Image

    batch = scored_batch()
    batch[S.IMAGE] = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    sizes = {}
    for quality in (95, 30):
        directory = tmp_path / f"{fmt}-{quality}"
        CandidateWriter(str(directory), fmt, quality)(batch)
        images = pq.read_table(files.list_files(str(directory), ".parquet")[0]).column(S.IMAGE).to_pylist()
        assert all(im.startswith(magic) for im in images)
        assert Image.open(io.BytesIO(images[0])).format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt]
        decoded = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))
        if fmt == "png":  # lossless
            np.testing.assert_array_equal(decoded, batch[S.IMAGE][0])
        sizes[quality] = sum(len(im) for im in images)
    if fmt == "png":
        assert sizes[95] == sizes[30]  # quality means nothing to PNG
    else:
        assert sizes[30] < sizes[95]
    with pytest.raises(ValueError, match="image.format='gif'"):
        CandidateWriter(str(tmp_path / "gif"), "gif")
