"""Selection from the score columns alone: best sample per caption, then the exact global top-K.

Ties: within a caption the lower sample index wins; across captions the smaller id wins.
Image bytes never enter here, so memory grows with the number of rows, not with the images.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.io import files


def read_scores(candidates_dir: str) -> pa.Table:
    """id, sample, score, clip_score, ssim of every usable candidate (reason null, finite score)."""
    t = files.read_parquet_dir(candidates_dir, S.SELECT_COLUMNS, filter=pc.field(S.REASON).is_null())
    if t is None:
        return pa.schema([S.CANDIDATES.field(c) for c in S.SELECT_COLUMNS if c != S.REASON]).empty_table()
    t = t.filter(pc.is_finite(t.column(S.SCORE)))
    return t.drop_columns([S.REASON])


def current_samples(scores: pa.Table, ids: pa.Array, repeat: int) -> tuple[pa.Table, int]:
    """The score rows of the captions `ids` with sample < `repeat`, and how many rows were left out."""
    keep = pc.and_(pc.is_in(scores.column(S.ID), value_set=ids), pc.less(scores.column(S.SAMPLE), repeat))
    kept = scores.filter(keep)
    return kept, scores.num_rows - kept.num_rows


def best_of_n(scores: pa.Table) -> pa.Table:
    """One row per id: the highest score, ties to the lower sample index (duplicates collapse too).

    Linear time: a per-id maximum, then the lowest sample among the rows that reach it, then the
    first such row; rows come out in order of each id's first appearance. Scores must be finite
    (read_scores guarantees it).
    """
    if scores.num_rows == 0:
        return scores
    ids = pc.dictionary_encode(scores.column(S.ID)).combine_chunks()
    codes = ids.indices.to_numpy()
    n_ids = len(ids.dictionary)
    score = scores.column(S.SCORE).to_numpy()
    sample = scores.column(S.SAMPLE).to_numpy().astype(np.int64)
    top = np.full(n_ids, -np.inf)
    np.maximum.at(top, codes, score)
    rows = np.flatnonzero(score == top[codes])
    low = np.full(n_ids, np.iinfo(np.int64).max)
    np.minimum.at(low, codes[rows], sample[rows])
    rows = rows[sample[rows] == low[codes[rows]]]
    first = np.full(n_ids, len(score), dtype=np.int64)  # exact duplicates: the first row wins
    np.minimum.at(first, codes[rows], rows)
    return scores.take(pa.array(first[first < len(score)]))


def resolve_k(n: int, k: int | None, fraction: float | None) -> int:
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"select.fraction must be in (0, 1], got {fraction}")
        return min(n, math.ceil(fraction * n))
    if k is None or k < 0:
        raise ValueError(f"select.k must be ≥ 0, got {k}")
    return min(n, k)


def top_k(best: pa.Table, k: int) -> tuple[pa.Table, float | None]:
    """The exact top k rows by score (ties → smaller id), ranked 1..k, and the k-th score."""
    k = min(k, best.num_rows)
    if k == 0:
        return best.slice(0, 0).append_column(S.RANK, pa.array([], pa.int64())), None
    score = best.column(S.SCORE).to_numpy()
    threshold = float(-np.partition(-score, k - 1)[k - 1])  # the k-th largest score
    above = np.nonzero(score > threshold)[0]
    at = best.take(pa.array(np.nonzero(score == threshold)[0]))
    at = at.sort_by([(S.ID, "ascending")]).slice(0, k - len(above))  # ties at the threshold: smaller ids
    chosen = pa.concat_tables([best.take(pa.array(above)), at])
    chosen = chosen.sort_by([(S.SCORE, "descending"), (S.ID, "ascending")])
    return chosen.append_column(S.RANK, pa.array(np.arange(1, k + 1, dtype=np.int64))), threshold


def select_top_k(scores: pa.Table, k: int | None = None, fraction: float | None = None) -> tuple[pa.Table, float | None, int]:
    """(selected id/sample/score/rank, threshold score, number of captions competing)."""
    best = best_of_n(scores)
    chosen, threshold = top_k(best, resolve_k(best.num_rows, k, fraction))
    return chosen, threshold, best.num_rows


class AttachRank:
    """Stage: candidate rows → only the selected (id, sample) pairs, with their rank."""

    def __init__(self, chosen: pa.Table):
        from factory.expand import sample_key

        keys = np.array([sample_key(i, s) for i, s in zip(chosen.column(S.ID).to_pylist(), chosen.column(S.SAMPLE).to_pylist())], dtype=np.int64)
        order = np.argsort(keys)
        self.keys, self.ranks = keys[order], chosen.column(S.RANK).to_numpy()[order]

    def __call__(self, batch: pa.Table) -> pa.Table:
        from factory.expand import sample_key

        if len(self.keys) == 0:
            return batch.slice(0, 0).append_column(S.RANK, pa.array([], pa.int64()))
        k = np.array([sample_key(i, s) for i, s in zip(batch.column(S.ID).to_pylist(), batch.column(S.SAMPLE).to_pylist())], dtype=np.int64)
        j = np.clip(np.searchsorted(self.keys, k), 0, len(self.keys) - 1)
        hit = self.keys[j] == k
        out = batch.filter(pa.array(hit))
        return out.append_column(S.RANK, pa.array(self.ranks[j[hit]], pa.int64()))
