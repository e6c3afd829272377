"""Selection from the score columns alone: best sample per caption, then the exact global top-K.

Ties: within a caption the lower sample index wins; across captions the smaller id wins.
Image bytes never enter here, so memory grows with the number of rows, not with the images.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.candidates import read_candidates
from factory.expand import sample_keys


def read_scores(candidate_paths: list[str], legacy: str | None = None) -> pa.Table:
    """id, sample, score, clip_score, ssim of every usable candidate (reason null, finite score),
    and `file`: the index in `candidate_paths` of the file the row is in."""
    if not candidate_paths:
        return pa.schema([S.CANDIDATES.field(c) for c in S.SELECT_COLUMNS if c != S.REASON] + [pa.field(S.FILE, pa.int32())]).empty_table()
    t = read_candidates(candidate_paths, S.SELECT_COLUMNS + ["__fragment_index"], legacy, filter=pc.field(S.REASON).is_null())
    t = t.rename_columns([S.FILE if c == "__fragment_index" else c for c in t.column_names])
    t = t.filter(pc.is_finite(t.column(S.SCORE)))
    return t.drop_columns([S.REASON])


def is_current(table: pa.Table, ids: pa.Array, repeat: int, generators: list[str]):
    """Per row of `table` (id, sample, generator columns): whether it is a sample of the captions
    `ids` below `repeat`, by one of `generators`."""
    of_run = pc.and_(pc.is_in(table.column(S.ID), value_set=ids), pc.less(table.column(S.SAMPLE), repeat))
    return pc.and_(of_run, pc.fill_null(pc.is_in(table.column(S.GENERATOR), value_set=pa.array(generators, pa.string())), False))


def current_samples(scores: pa.Table, ids: pa.Array, repeat: int, generators: list[str]) -> tuple[pa.Table, int]:
    """The score rows of the captions `ids` with sample < `repeat` by `generators`, and how many rows were left out."""
    kept = scores.filter(is_current(scores, ids, repeat, generators))
    return kept, scores.num_rows - kept.num_rows


BEST_BY = (S.SCORE, S.CLIP_SCORE)  # select.best_by: which column picks the best of a caption's samples


def check_best_by(by: str) -> None:
    if by not in BEST_BY:
        raise ValueError(f"select.best_by={by!r}: expected one of {', '.join(BEST_BY)}")


def best_of_n(scores: pa.Table, by: str = S.SCORE) -> pa.Table:
    """One row per id: the highest `by` (score, or clip_score as SynthVLM's own `repeat` option
    picks), ties to the lower sample index, then to the generator first in string order
    (duplicates collapse too).

    Linear time: a per-id maximum, then the lowest sample among the rows that reach it, then the
    lowest generator, then the first such row; rows come out in order of each id's first appearance. Scores must be finite
    (read_scores guarantees it).
    """
    if scores.num_rows == 0:
        return scores
    ids = pc.dictionary_encode(scores.column(S.ID)).combine_chunks()
    codes = ids.indices.to_numpy()
    n_ids = len(ids.dictionary)
    check_best_by(by)
    score = scores.column(by).to_numpy()
    sample = scores.column(S.SAMPLE).to_numpy().astype(np.int64)
    top = np.full(n_ids, -np.inf)
    np.maximum.at(top, codes, score)
    rows = np.flatnonzero(score == top[codes])
    low = np.full(n_ids, np.iinfo(np.int64).max)
    np.minimum.at(low, codes[rows], sample[rows])
    rows = rows[sample[rows] == low[codes[rows]]]
    if S.GENERATOR in scores.column_names:  # across generators: the first name in string order
        gens = scores.column(S.GENERATOR).to_pylist()
        order = {g: r for r, g in enumerate(sorted(set(gens), key=lambda g: (g is None, g or "")))}
        gen = np.array([order[g] for g in gens], dtype=np.int64)
        least = np.full(n_ids, np.iinfo(np.int64).max)
        np.minimum.at(least, codes[rows], gen[rows])
        rows = rows[gen[rows] == least[codes[rows]]]
    first = np.full(n_ids, len(score), dtype=np.int64)  # exact duplicates: the first row wins
    np.minimum.at(first, codes[rows], rows)
    return scores.take(pa.array(first[first < len(score)]))


def check_select(k, fraction, best_by: str = S.SCORE) -> None:
    """Refuse select.k / select.fraction / select.best_by before a run spends hours generating, not after."""
    check_best_by(best_by)
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))):
        raise ValueError(f"select.fraction must be a number in (0, 1] or null, got {fraction!r}")
    if fraction is None and k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise ValueError(f"select.k must be a whole number ≥ 0, got {k!r}")
    resolve_k(1, k, fraction)


def resolve_k(n: int, k: int | None, fraction: float | None) -> int:
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"select.fraction must be in (0, 1], got {fraction}")
        # Exact: ceil(0.07 * 100) is 8 in floating point; the fraction the user wrote times n is 7.
        return min(n, math.ceil(Fraction(str(fraction)) * n))
    if k is None or k < 0:
        raise ValueError(f"select.k must be ≥ 0, got {k}")
    return min(n, k)


def top_k(best: pa.Table, k: int) -> tuple[pa.Table, float | None]:
    """The exact top k rows by score (ties → smaller id in string order, "10" < "9"), ranked 1..k, and the k-th score."""
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


def select_top_k(scores: pa.Table, k: int | None = None, fraction: float | None = None,
                 best_by: str = S.SCORE) -> tuple[pa.Table, float | None, int]:
    """(selected id/sample/score/rank, threshold score, number of captions competing): the best
    sample of each caption by `best_by`, then the global top k of those by score."""
    best = best_of_n(scores, best_by)
    chosen, threshold = top_k(best, resolve_k(best.num_rows, k, fraction))
    return chosen, threshold, best.num_rows


class PickSelected:
    """The chosen rows of one candidates file, with their rank: exactly one row per chosen
    (file, id, sample), so a sample that candidates/ holds twice (two runs that overlapped on
    one output) still lands in the dataset once."""

    def __init__(self, chosen: pa.Table):
        keys = sample_keys(chosen)
        file = chosen.column(S.FILE).to_numpy()
        order = np.lexsort((keys, file))
        self.file, self.keys, self.ranks = file[order], keys[order], chosen.column(S.RANK).to_numpy()[order]

    def files(self) -> np.ndarray:
        """Indices of the files that hold chosen rows, ascending, and how many rows each."""
        return np.unique(self.file, return_counts=True)

    def __call__(self, file_index: int, table: pa.Table) -> pa.Table:
        lo, hi = np.searchsorted(self.file, file_index, "left"), np.searchsorted(self.file, file_index, "right")
        keys, ranks = self.keys[lo:hi], self.ranks[lo:hi]
        k = sample_keys(table)
        j = np.clip(np.searchsorted(keys, k), 0, max(len(keys) - 1, 0))
        hits = np.flatnonzero(keys[j] == k) if len(keys) else np.empty(0, np.int64)
        _, once = np.unique(j[hits], return_index=True)  # the same key twice within a file: its first row only
        first = np.zeros(len(k), bool)
        first[hits[once]] = True
        out = table.filter(pa.array(first))
        return out.append_column(S.RANK, pa.array(ranks[j[first]], pa.int64()))
