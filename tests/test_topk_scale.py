"""factory.select at scale: the exact top-K against a plain pyarrow sort, and the benchmark's CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from factory import schema as S
from factory.select import best_of_n, select_top_k

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from topk_scale import synthetic_scores  # noqa: E402


def reference_top_k(scores: pa.Table, k: int) -> pa.Table:
    """By pyarrow sorts alone: per id the best score, lower sample on ties, first row on duplicates;
    then score descending, smaller id on ties."""
    t = scores.append_column("row", pa.array(np.arange(scores.num_rows)))
    t = t.sort_by([(S.ID, "ascending"), (S.SCORE, "descending"), (S.SAMPLE, "ascending"), ("row", "ascending")])
    ids = t.column(S.ID).combine_chunks()
    first = np.ones(t.num_rows, dtype=bool)
    first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    best = t.filter(pa.array(first))
    return best.sort_by([(S.SCORE, "descending"), (S.ID, "ascending")]).slice(0, k).drop_columns(["row"])


@pytest.mark.parametrize("rows,samples,k", [(200_000, 2, 10_000), (30_000, 3, 9_990), (1_000, 2, 0)])
def test_top_k_equals_pyarrow_sort(rows, samples, k):
    scores = synthetic_scores(rows, samples, seed=rows)
    chosen, threshold, competing = select_top_k(scores, k=k)
    ref = reference_top_k(scores, k)
    assert competing == rows // samples
    assert chosen.num_rows == ref.num_rows == min(k, rows // samples)
    for col in (S.ID, S.SAMPLE, S.SCORE):
        assert chosen.column(col).to_pylist() == ref.column(col).to_pylist(), col
    assert chosen.column(S.RANK).to_pylist() == list(range(1, k + 1))
    if k:
        assert threshold == ref.column(S.SCORE)[k - 1].as_py()


def test_best_of_n_tie_rules_and_duplicates():
    t = pa.table({
        S.ID: ["b", "a", "b", "a", "c", "c", "c"],
        S.SAMPLE: pa.array([1, 0, 0, 1, 2, 2, 0], pa.int32()),
        S.SCORE: [0.5, 0.7, 0.5, 0.9, 0.3, 0.3, 0.1],
        "tag": ["b1", "a0", "b0", "a1", "c2-first", "c2-dup", "c0"],
    })
    best = best_of_n(t)
    assert dict(zip(best.column(S.ID).to_pylist(), best.column("tag").to_pylist())) == {"a": "a1", "b": "b0", "c": "c2-first"}


def test_benchmark_cli_prints_seconds_last():
    out = subprocess.run([sys.executable, "benchmarks/topk_scale.py", "--rows", "20000"], cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) >= 0
