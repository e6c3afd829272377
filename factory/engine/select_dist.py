"""Selection over score rows that never meet in one process: `select.select_top_k` as a reduce.

1. The rows are shuffled by caption id, so each partition holds every sample of its captions, and
   each partition takes its best-of-N with the driver's own `select.best_of_n` (rows put in
   (file, row) order first: "the first row" of exact duplicates is the one `read_scores` reads
   first). The best rows stay on the workers; their count (block metadata) sets k for a fraction.
2. Each partition's top k by (score descending, id ascending), a total order since ids are now
   unique, holds every row of the global top k that it holds at all; tasks merge those k-row
   tables a few at a time (`select.top_k` of their union) up a tree, and the driver receives only
   the final k rows, ranked, and the threshold.

The driver holds object references, one count per block, and the k chosen rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Dataset

from factory import schema as S
from factory.candidates import read_candidates
from factory.engine.shuffle import default_partitions, materialized, per_block, per_key
from factory.io import files
from factory.select import best_of_n, check_best_by, is_current, resolve_k, top_k

SCORES = pa.schema([S.CANDIDATES.field(c) for c in S.SELECT_COLUMNS if c != S.REASON]
                   + [pa.field(S.FILE, pa.int32()), pa.field(S.ROW, pa.int64())])
FAN_IN = 4  # tables merged per task: a merge holds FAN_IN * k rows
ROWS_PER_PARTITION = 2_000_000  # score rows are small (~50 bytes): ~100 MB a partition


CURRENT = "current"  # int8: whether a score row competes (select.is_current)


@dataclass(frozen=True)
class Competing:
    """Which score rows compete (select.is_current): samples below `repeat` of the curated captions
    (`ids`, an object reference: the workers fetch them, the driver holds one reference) by `generators`."""

    ids: object  # ray.ObjectRef of a pa.Array of ids
    repeat: int
    generators: tuple[str, ...]

    @classmethod
    def of(cls, ids: pa.Array, repeat: int, generators) -> "Competing":
        return cls(ray.put(ids), repeat, tuple(generators))


def read_score_file(batch: pa.Table, legacy: str | None = None, competing: Competing | None = None) -> pa.Table:
    """The usable score rows (reason null, finite score) of the candidates file in `batch` (path,
    file), with `file` and their `row` within the file: `read_scores` rows, one file's worth (null
    generators named `legacy`). With `competing`: a `current` column (1 where the row competes)."""
    path, index = batch.column("path")[0].as_py(), batch.column(S.FILE)[0].as_py()
    t = read_candidates([path], list(S.SELECT_COLUMNS), legacy)
    t = t.append_column(S.FILE, pa.array(np.full(t.num_rows, index, np.int32))).append_column(S.ROW, pa.array(np.arange(t.num_rows, dtype=np.int64)))
    t = t.filter(pc.and_(pc.is_null(t.column(S.REASON)), pc.is_finite(t.column(S.SCORE))))
    t = t.drop_columns([S.REASON]).cast(SCORES)
    if competing is not None:
        current = is_current(t, ray.get(competing.ids), competing.repeat, list(competing.generators))
        t = t.append_column(CURRENT, pc.cast(current, pa.int8()))
    return t


def scores_dataset(candidate_paths: list[str], cpu_per_task: float = 1.0, legacy: str | None = None,
                   competing: Competing | None = None) -> Dataset:
    """The score rows of `candidate_paths` as a Ray Dataset, one task per file (never the images);
    see read_score_file for `legacy` and `competing`."""
    if not candidate_paths:
        empty = SCORES.empty_table()
        return ray.data.from_arrow(empty if competing is None else empty.append_column(CURRENT, pa.array([], pa.int8())))
    items = [{"path": p, S.FILE: i} for i, p in enumerate(candidate_paths)]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        functools.partial(read_score_file, legacy=legacy, competing=competing), batch_size=1, batch_format="pyarrow",
        num_cpus=cpu_per_task)


@ray.remote(num_returns=2)
def _read_competing(path: str, index: int, legacy: str | None, competing: Competing) -> tuple[pa.Table, int]:
    t = read_score_file(pa.table({"path": [path], S.FILE: [index]}), legacy, competing)
    current = t.filter(pc.equal(t.column(CURRENT), 1)).drop_columns([CURRENT])
    return current, t.num_rows - current.num_rows


def competing_scores(candidate_paths: list[str], competing: Competing, cpu_per_task: float = 1.0,
                     legacy: str | None = None) -> tuple[Dataset, int]:
    """The score rows that compete (in the object store, one block a file) and how many usable rows
    do not: select.current_samples(read_scores(...)) without the rows on the driver."""
    if not candidate_paths:
        return ray.data.from_arrow(SCORES.empty_table()), 0
    read = _read_competing.options(num_cpus=cpu_per_task)
    tables, left_out = zip(*(read.remote(p, i, legacy, competing) for i, p in enumerate(candidate_paths)))
    return ray.data.from_arrow_refs(list(tables)), sum(ray.get(list(left_out)))


CURATED = "curated"  # int8 in the join of score rows with the curated ids: 1 on an id's row


def _tagged(block: pa.Table, curated: int) -> pa.Table:
    """Score rows (curated 0) or curated ids (curated 1, the other columns null) in one schema."""
    return files.conform(block, SCORES).append_column(CURATED, pa.array(np.full(block.num_rows, curated, np.int8)))


def _of_curated(part: pa.Table, repeat: int, generators: tuple[str, ...]) -> pa.Table:
    """The score rows of a partition (all rows of its ids) that compete: select.is_current."""
    ids = part.filter(pc.equal(part.column(CURATED), 1)).column(S.ID).combine_chunks()
    rows = part.filter(pc.equal(part.column(CURATED), 0)).drop_columns([CURATED])
    return rows.filter(is_current(rows, ids, repeat, list(generators)))


def competing_by_join(candidate_paths: list[str], curated: Dataset, repeat: int, generators, cpu_per_task: float = 1.0,
                      legacy: str | None = None) -> tuple[Dataset, int]:
    """competing_scores with the curated ids (`curated`, one column id) as a dataset that never
    reaches the driver or any one worker whole: score rows and ids meet in their id's partition."""
    scores = materialized(scores_dataset(candidate_paths, cpu_per_task, legacy))
    both = per_block(scores, functools.partial(_tagged, curated=0)).union(per_block(curated, functools.partial(_tagged, curated=1)))
    fn = functools.partial(_of_curated, repeat=repeat, generators=tuple(generators))
    rows = materialized(per_key(both, [S.ID], fn, default_partitions(scores, ROWS_PER_PARTITION)))
    return rows, scores.count() - rows.count()


def partition_best(part: pa.Table, best_by: str) -> pa.Table:
    """Best-of-N of a partition that holds all rows of its ids, exact duplicates resolved in (file, row) order."""
    return best_of_n(part.sort_by([(S.FILE, "ascending"), (S.ROW, "ascending")]), best_by)


def _unranked_top(tables: list[pa.Table], k: int) -> pa.Table:
    tables = [t for t in tables if t.num_rows] or tables[:1]
    return top_k(pa.concat_tables(tables), k)[0].drop_columns([S.RANK])


@ray.remote
def _merge(k: int, *tables: pa.Table) -> pa.Table:
    return _unranked_top(list(tables), k)


@ray.remote(num_returns=2)
def _ranked(k: int, table: pa.Table) -> tuple[pa.Table, float | None]:
    chosen, threshold = top_k(table, k)
    return chosen.drop_columns([S.ROW]), threshold


def merged_top_k(blocks: list, k: int, fan_in: int = FAN_IN) -> tuple[pa.Table, float | None]:
    """The top k of the union of `blocks` (refs of tables with unique ids), ranked, and the k-th score."""
    level = [_merge.remote(k, ref) for ref in blocks]
    while len(level) > 1:
        level = [_merge.remote(k, *level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    chosen, threshold = _ranked.remote(k, level[0])
    return ray.get(chosen), ray.get(threshold)


def check_columns(ds: Dataset) -> None:
    schema = ds.schema()
    names = schema.names if schema is not None else []
    missing = [c for c in (S.ID, S.SAMPLE, S.GENERATOR, S.SCORE, S.CLIP_SCORE, S.SSIM, S.FILE, S.ROW) if c not in names]
    if missing:
        raise ValueError(f"score rows lack column(s) {', '.join(missing)} (read them with select_dist.scores_dataset)")


def select_top_k_distributed(scores: Dataset, k: int | None = None, fraction: float | None = None,
                             best_by: str = S.SCORE, partitions: int | None = None) -> tuple[pa.Table, float | None, int]:
    """`select.select_top_k` of all rows of `scores` (id, sample, generator, score, clip_score, ssim, file, row):
    (chosen rows with rank, the k-th score, the number of captions competing), equal to the driver
    version on the rows in (file, row) order, ties and the `file` of exact duplicates included."""
    check_best_by(best_by)
    check_columns(scores)
    partitions = partitions or default_partitions(scores, ROWS_PER_PARTITION)
    best = materialized(per_key(scores, [S.ID], functools.partial(partition_best, best_by=best_by), partitions))
    competing = best.count()
    blocks = best.to_arrow_refs()
    if not blocks:
        blocks = [ray.put(scores.schema().base_schema.empty_table())]
    chosen, threshold = merged_top_k(blocks, resolve_k(competing, k, fraction))
    return chosen, threshold, competing
