"""The reader streams: a JSON array parsed piece by piece equals json.loads of the whole, and a file
is read in batches with memory bounded by a batch, not by the file."""
from __future__ import annotations

import gzip
import io
import json
import random
import re
import tracemalloc

import pyarrow as pa
import pytest

from factory import schema as S
from factory.io.read import iter_caption_batches, read_caption_file
from factory.io.textstream import JsonArray


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 3 or kind < 0.35:
        return rng.choice([0, -12.5e-3, 10**30, True, False, None, "", 'a "quoted" \\ back\u2028slash', "é中文😀", "x" * rng.randint(0, 40)])
    if kind < 0.65:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}[{{": random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_a_json_array_read_in_pieces_equals_json_loads(chunk):
    """Pieces as small as one byte: values, strings, escapes and multi-byte characters cut anywhere."""
    rng = random.Random(chunk)
    for _ in range(60):
        doc = [random_value(rng) for _ in range(rng.randint(0, 6))]
        text = json.dumps(doc, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        values = JsonArray(io.BytesIO(text.encode()), limit=10_000, keep=50, chunk=chunk).values()
        assert [v for v, problem in values if problem is None] == json.loads(text)


def test_a_json_value_over_the_limit_is_skipped_whole():
    doc = [{"caption": "a" * 500, "nested": [["]"]]}, {"caption": "ok"}, "s" * 300, 7]
    got = list(JsonArray(io.BytesIO(json.dumps(doc).encode()), limit=100, keep=10, chunk=7).values())
    assert [v for v, p in got if p is None] == [{"caption": "ok"}, 7]
    assert [p.reason for _, p in got if p] == [S.R_TOO_LARGE, S.R_TOO_LARGE]


def captions_file(path, rows: int, compress: bool):
    lines = "".join(json.dumps({"id": f"c{i}", "caption": f"A red car number {i} parked on a quiet street."}) + "\n" for i in range(rows))
    path.write_bytes(gzip.compress(lines.encode(), compresslevel=1) if compress else lines.encode())
    return len(lines)


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_a_file_comes_in_batches_in_order(tmp_path, name):
    path = tmp_path / name
    captions_file(path, 20_000, name.endswith(".gz"))
    rows, batches, ids_ok = 0, 0, True
    for batch in iter_caption_batches(str(path), 3, rows_per_batch=500):
        ids = batch.column(S.ID).to_pylist()
        ids_ok &= ids == [f"c{i}" for i in range(rows, rows + len(ids))]
        rows, batches = rows + batch.num_rows, batches + 1
    assert rows == 20_000 and batches == 40 and ids_ok


def test_a_small_gzip_of_a_huge_file_is_read_a_piece_at_a_time(tmp_path):
    """A 100 KB .gz that expands to 128 MiB of lines (the issue's 7 MB that expanded to 2 GiB, scaled
    down): its first batch comes after Python allocated a few MiB (tracemalloc), not the file."""
    line = json.dumps({"id": "same", "caption": "A red car parked on a quiet street at dusk."}) + "\n"
    block = (line * (2**20 // len(line))).encode()
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        for _ in range(128):
            f.write(block)
    assert path.stat().st_size < 2**20
    def first_batch():
        batches = iter_caption_batches(str(path), 0, rows_per_batch=1000)
        try:
            return next(batches)
        finally:
            batches.close()

    first_batch()  # warm up: first imports allocate too
    tracemalloc.start()
    try:
        first = first_batch()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.num_rows == 1000
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_read_caption_file_is_the_batches_together(tmp_path):
    path = tmp_path / "c.jsonl"
    captions_file(path, 1000, False)
    whole = read_caption_file(str(path), 1)
    assert whole.equals(pa.concat_tables(iter_caption_batches(str(path), 1, rows_per_batch=64)))
    assert whole.column(S.POS).to_pylist() == [(1 << 32) | i for i in range(1000)]


def test_the_memory_benchmark_prints_its_figure_last(tmp_path):
    """benchmarks/read_memory.py at 2 MiB, the reader alone (no Ray): a peak RSS in MB, last."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "benchmarks/read_memory.py", "--mib", "2", "--formats", "jsonl.gz", "--phases", "reader"],
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "reader" in lines[1] and " rows " in lines[1]
    assert 10 < float(lines[-1]) < 1000


def test_a_json_file_of_one_object_or_of_no_array(tmp_path):
    """One object is one row; anything else stops with json's own message and line (json.loads as the reference)."""
    from factory.io.read import InputError

    (tmp_path / "one.json").write_text('\ufeff {"id": 1, "caption": "A red car on a quiet street."}\n')
    assert [(r[S.ID], r[S.REASON]) for r in read_caption_file(str(tmp_path / "one.json"), 0).to_pylist()] == [("1", None)]
    (tmp_path / "c.json").write_text("42")
    with pytest.raises(InputError, match="expected a JSON array of objects, got int"):
        read_caption_file(str(tmp_path / "c.json"), 0)
    for text in ('[{"caption": "a"}]\n x', '[{"caption": "a"}\n {"caption": "b"}]', '[\n{"caption": "a"},\n\n{"caption" "b"}]'):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(json.JSONDecodeError) as ref:
            json.loads(text)
        with pytest.raises(InputError, match=re.escape(f"c.json:{ref.value.lineno}: not valid JSON ({ref.value.msg})")):
            read_caption_file(str(tmp_path / "c.json"), 0)
