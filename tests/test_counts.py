"""Counts read from an output's files with the driver's memory bounded: rejects and verdicts a
batch at a time (files.count_values), the candidates on the workers where selection is
distributed (engine/dist_counts) — each equal to pyarrow's own count of the whole table."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory import schema as S
from factory.counts import count_candidates, count_rejects
from factory.engine import dist_counts
from factory.io import files
from tests.test_outputs import candidates_table

REASONS = [None, S.R_OOM, S.R_BAD_IMAGE, S.R_OOM]


def test_rejects_are_counted_a_batch_at_a_time_as_pyarrow_counts_them_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "COUNT_BATCH_ROWS", 7)  # many batches a file
    rng = np.random.default_rng(0)
    reasons = [S.R_DUP_CAPTION, S.R_NEAR_DUP, S.R_TOO_SHORT]
    for f in range(3):
        n = int(rng.integers(0, 40))
        pq.write_table(pa.table({S.ID: [str(i) for i in range(n)], S.REASON: [reasons[i] for i in rng.integers(0, 3, n)]}),
                       tmp_path / f"part-{f}.parquet")
    whole = pq.read_table(tmp_path, columns=[S.REASON]).group_by(S.REASON).aggregate([(S.REASON, "count")]).to_pylist()
    n, by_reason = count_rejects(str(tmp_path))
    assert by_reason == {r[S.REASON]: r[f"{S.REASON}_count"] for r in whole} and n == sum(by_reason.values()) > 0
    assert list(by_reason.values()) == sorted(by_reason.values(), reverse=True)
    assert count_rejects(str(tmp_path / "none")) == (0, {})


def test_candidates_counted_on_the_workers_equal_the_drivers_count(tmp_path, ray_local):
    """Samples written twice, in one file or in two, each counted once by its best outcome."""
    rng = np.random.default_rng(1)
    n = 300
    ids = [f"c{i}" for i in rng.integers(0, 60, n)]
    samples = rng.integers(0, 3, n).tolist()
    reasons = [REASONS[i] for i in rng.integers(0, len(REASONS), n)]
    t = candidates_table(ids, samples, reasons, [None if r else 0.5 for r in reasons])
    for f, start in enumerate(range(0, n, 70)):
        files.write_parquet_atomic(str(tmp_path / f"part-{f}.parquet"), t.slice(start, 70))
    local = count_candidates(str(tmp_path))
    paths = files.list_files(str(tmp_path), ".parquet")
    assert dist_counts.count_candidates(paths, None, 0.25) == local
    assert local["rows"] == t.group_by([S.ID, S.SAMPLE]).aggregate([]).num_rows
    usable = t.filter(pc.is_null(t.column(S.REASON))).group_by([S.ID, S.SAMPLE]).aggregate([]).num_rows
    assert local["usable"] == usable < local["rows"] and local["by_generator"] == {"g": {"samples": local["rows"], "usable": usable}}
    assert dist_counts.count_candidates([], None, 0.25) == count_candidates(str(tmp_path / "none"))


def test_a_file_without_the_column_counts_its_rows_as_none(tmp_path):
    pq.write_table(pa.table({S.ID: ["a", "b"]}), tmp_path / "old.parquet")
    pq.write_table(pa.table({S.ID: ["c"], S.GENERATOR: ["g"]}), tmp_path / "new.parquet")
    assert files.count_values(files.list_files(str(tmp_path), ".parquet"), S.GENERATOR) == {None: 2, "g": 1}
