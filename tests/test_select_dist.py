"""Distributed selection equals `select.select_top_k` on the same rows, ties and the `file` of exact
duplicates included, and reads candidates files as `read_scores` does."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from factory import schema as S
from factory.io import files
from factory.engine.select_dist import Competing, competing_scores, scores_dataset, select_top_k_distributed
from factory.select import best_of_n, current_samples, read_scores, select_top_k


GENERATORS = ["sd35", "flux", "pixart", None]  # None: a legacy row whose generator is unknown (sorts last)


def score_rows(n_ids: int, repeat: int, seed: int, files_n: int = 7) -> pa.Table:
    """Rows in (file, row) order: coarse scores (ties within and across ids, and across generators
    at the same sample), ids of mixed forms, and exact duplicates (the same id, sample and
    generator again, in the same or a later file)."""
    rng = np.random.default_rng(seed)
    ids = list(dict.fromkeys([str(rng.integers(0, 10**5)) if rng.random() < 0.5 else f"c{rng.integers(0, 10**5)}" for _ in range(n_ids)]))
    rows = [(i, s, g) for i in ids for s in range(repeat) for g in GENERATORS if rng.random() < 0.6]
    rows += [rows[j] for j in rng.integers(0, len(rows), len(rows) // 5)]  # duplicates
    rows = [rows[j] for j in rng.permutation(len(rows))]
    n = len(rows)
    clip = rng.integers(0, 8, n) / 8
    ssim = rng.integers(0, 4, n) / 4
    file = np.sort(rng.integers(0, files_n, n)).astype(np.int32)
    row = np.zeros(n, dtype=np.int64)
    for f in np.unique(file):
        row[file == f] = np.arange((file == f).sum())
    return pa.table({S.ID: [r[0] for r in rows], S.SAMPLE: pa.array([r[1] for r in rows], pa.int32()),
                     S.GENERATOR: pa.array([r[2] for r in rows], pa.string()), S.SCORE: clip + 0.5 * ssim, S.CLIP_SCORE: clip, S.SSIM: ssim, S.FILE: file, S.ROW: row})


def blocks_of(ray, t: pa.Table, n: int):
    """A dataset of `t` cut into n blocks handed over in a shuffled order: no row order to lean on."""
    step = -(-t.num_rows // n)
    parts = [t.slice(i, step) for i in range(0, t.num_rows, step)]
    return ray.data.from_arrow([parts[i] for i in np.random.default_rng(0).permutation(len(parts))])


@pytest.mark.parametrize("k,fraction,best_by,seed,partitions", [(40, None, S.SCORE, 1, 6), (None, 0.3, S.CLIP_SCORE, 2, 2),
                                                               (10_000, None, S.SCORE, 3, 2), (0, None, S.SCORE, 4, 2)])
def test_equals_the_driver_with_heavy_ties(ray_local, k, fraction, best_by, seed, partitions):
    """6 partitions: their top-k tables merge in two levels of tasks."""
    t = score_rows(400, 3, seed)
    ref, ref_threshold, ref_competing = select_top_k(t.drop_columns([S.ROW]), k, fraction, best_by)
    chosen, threshold, competing = select_top_k_distributed(blocks_of(ray_local, t, 3), k, fraction, best_by, partitions)
    assert (competing, threshold) == (ref_competing, ref_threshold)
    assert chosen.schema == ref.schema
    assert chosen.equals(ref)  # ids, samples, generators, scores, file of duplicates, ranks
    # The generator tie-break decides rows here: under other names (order reversed) best-of-N picks other rows.
    renamed = {g: "z" * (5 - i) for i, g in enumerate(sorted(g for g in GENERATORS if g))}
    flipped = t.set_column(t.schema.get_field_index(S.GENERATOR), S.GENERATOR,
                           pa.array([renamed.get(g) for g in t.column(S.GENERATOR).to_pylist()], pa.string()))
    assert best_of_n(flipped).column(S.GENERATOR).to_pylist() != [renamed.get(g) for g in best_of_n(t).column(S.GENERATOR).to_pylist()]


def write_files(t: pa.Table, n: int, folder) -> list[str]:
    """Score rows as n candidates files, by their file column (left out, as the row column)."""
    paths = []
    for f in range(n):
        paths.append(str(folder / f"part-{f}.parquet"))
        files.write_parquet_atomic(paths[-1], t.filter(pc.equal(t.column(S.FILE), f)).drop_columns([S.FILE, S.ROW]))
    return paths


def test_reads_candidates_files_as_read_scores(ray_local, tmp_path):
    t = score_rows(200, 2, 5, files_n=4)
    t = t.append_column(S.REASON, pa.array([None if i % 13 else "bad_image" for i in range(t.num_rows)], pa.string()))
    paths = write_files(t, 4, tmp_path)
    ref = select_top_k(read_scores(paths), 50)
    got = select_top_k_distributed(scores_dataset(paths), 50, partitions=2)
    assert got[0].equals(ref[0]) and got[1:] == ref[1:]


def test_competing_rows_as_current_samples(ray_local, tmp_path):
    """Legacy rows (null generator) named, then only this run's captions, samples and generators
    compete: equal to select.current_samples(read_scores(...)) and select_top_k, and the same count left out."""
    t = score_rows(300, 3, 7, files_n=5)
    t = t.append_column(S.REASON, pa.array([None if i % 11 else "bad_image" for i in range(t.num_rows)], pa.string()))
    paths = write_files(t, 5, tmp_path)
    ids = pa.array(sorted(set(t.column(S.ID).to_pylist()))[::2], pa.string())
    repeat, generators, legacy = 2, ["pixart", "sd35"], "sd35"
    scores, left_out = current_samples(read_scores(paths, legacy), ids, repeat, generators)
    ref = select_top_k(scores, 60)
    rows, n_out = competing_scores(paths, Competing(ray_local.put(ids), repeat, tuple(generators)), legacy=legacy)
    got = select_top_k_distributed(rows, 60, partitions=3)
    assert n_out == left_out > 0
    assert got[0].equals(ref[0]) and got[1:] == ref[1:]
    assert "sd35" in got[0].column(S.GENERATOR).to_pylist()  # legacy rows named and selected


def test_no_candidates_selects_nothing(ray_local):
    chosen, threshold, competing = select_top_k_distributed(scores_dataset([]), 10, partitions=2)
    ref = select_top_k(read_scores([]), 10)
    assert chosen.equals(ref[0]) and (threshold, competing) == (None, 0) == ref[1:]


def test_missing_order_column_is_one_line(ray_local):
    t = score_rows(10, 1, 6).drop_columns([S.ROW])
    with pytest.raises(ValueError, match="lack column"):
        select_top_k_distributed(ray_local.data.from_arrow(t), 3)


def test_benchmark_checks_itself_against_the_driver(ray_local):
    from benchmarks import topk_scale

    assert topk_scale.main(["--distributed", "--rows", "10000", "--k", "300", "--partitions", "3", "--check"]) > 0
