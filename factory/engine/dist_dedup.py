"""Exact and near-duplicate removal across workers: `prepass.find_losers` without a driver
that holds every row's keys.

`duplicate_losers(keys, deduplicators)` takes the pre-pass keys as a Ray Dataset (id, pos,
norm_hash, and minhash when near-duplicate removal is on) and returns the same rejected rows
(pos, reason, detail) as the driver implementation, as a Dataset. Every step is a keyed shuffle
(`factory.shuffle.per_key`) whose partition function reuses the driver code on its partition:

1. ids, then normalised captions: rows shuffled by the key meet their whole group, and
   `dedup.split_duplicates` marks all but the first (by pos) of each group.
2. near duplicates, among the rows left (`dist_near.near_edges`): LSH buckets by a shuffle of band
   keys, candidate pairs screened where their bucket meets, verified where their signatures meet:
   exactly the pairs `near_dup.candidate_pairs` makes, judged as `find_near_duplicates` judges them.
3. the verified pairs are edges between keeper keys (`keeper_keys`: binary values ordered as
   `near_dup.id_order`), so the minimum of each connected component (`components.star_edges`) is
   the caption the driver keeps; every other node is rejected as its near duplicate.
"""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Dataset

from factory import schema as S
from factory.curate.dedup import LOSERS, split_duplicates
from factory.curate.keeper_keys import key_pos_id
from factory.curate.near_dup import band_keys
from factory.engine.components import U, V, star_edges
from factory.engine.dist_near import BANDS, near_edges, signature_matrix
from factory.engine.shuffle import (
    cluster_cpus,
    materialized,
    per_block,
    per_key,
    uncompressed,
)
from factory.stage import Deduplicator, ExactStep, NearStep

PARTITION_BYTES = 256 * 2**20


def prepare(block: pa.Table, bands: int | None) -> pa.Table:
    """(id, pos, norm_hash) of each row, and its LSH band keys when near duplicates are searched."""
    t = block.select([S.ID, S.POS, S.NORM_HASH])
    if bands:
        keys = band_keys(signature_matrix(block.column(S.MINHASH)), bands)
        t = t.append_column(BANDS, pa.FixedSizeListArray.from_arrays(pa.array(keys.reshape(-1)), bands))
    return t


def unmarked(block: pa.Table) -> pa.Table:
    """The rows with empty reason and detail columns, where they have none yet."""
    if S.REASON in block.column_names:
        return block
    return block.append_column(S.REASON, pa.nulls(block.num_rows, pa.string())).append_column(S.DETAIL, pa.nulls(block.num_rows, pa.string()))


def mark(part: pa.Table, key: str, reason: str) -> pa.Table:
    """All rows of a partition; among those not yet marked, all but the first of each `key` group
    get `reason` and "duplicate of id X" (dedup.split_duplicates on the partition)."""
    part = unmarked(part)
    done, todo = part.filter(pc.is_valid(part.column(S.REASON))), part.filter(pc.is_null(part.column(S.REASON)))
    firsts, lost = split_duplicates(todo, key, reason)
    pos = todo.column(S.POS).to_numpy()
    order = np.argsort(pos)
    rows = todo.take(pa.array(order[np.searchsorted(pos[order], lost.column(S.POS).to_numpy())]))
    rows = rows.drop_columns([S.REASON, S.DETAIL]).append_column(S.REASON, lost.column(S.REASON)).append_column(S.DETAIL, lost.column(S.DETAIL))
    return pa.concat_tables([done, firsts, rows.cast(firsts.schema)])


def marked_losers(block: pa.Table) -> pa.Table:
    return block.filter(pc.is_valid(block.column(S.REASON))).select(LOSERS.names).cast(LOSERS)


def star_losers(block: pa.Table) -> pa.Table:
    """(pos, near_duplicate, "near duplicate of id K") of each node u whose component's keeper is v."""
    pos = [key_pos_id(k)[0] for k in block.column(U).to_pylist()]
    detail = [f"near duplicate of id {key_pos_id(k)[1]}" for k in block.column(V).to_pylist()]
    return pa.table({S.POS: pa.array(pos, pa.int64()), S.REASON: pa.array([S.R_NEAR_DUP] * len(pos), pa.string()),
                     S.DETAIL: pa.array(detail, pa.string())}, schema=LOSERS)


def shuffle_steps(dedup: list[Deduplicator]) -> tuple[list[ExactStep], NearStep | None]:
    """The deduplicators' steps in config order: exact steps, then at most one near-duplicate step
    (which must come last: it searches among the rows the exact steps kept)."""
    exact, near = [], None
    for d in dedup:
        steps = d.shuffle_steps()
        if steps is None:
            raise ValueError(f"deduplicator {d.name} has no distributed form (shuffle_steps): raise ray.local_scan_mb above the input's size")
        for step in steps:
            if near is not None:
                raise ValueError(f"deduplicator {d.name} comes after a near-duplicate step: the distributed pre-pass runs the near-duplicate search last")
            if isinstance(step, NearStep):
                near = step
            else:
                exact.append(step)
    return exact, near


def duplicate_losers(keys: Dataset, dedup: list[Deduplicator], partitions: int | None = None,
                     local_max_edges: int = 2_000_000) -> Dataset:
    """(pos, reason, detail) of every row that loses a duplicate group of `dedup` (their
    `shuffle_steps`, in order): as a set, equal to prepass.find_losers on all the keys in one table.

    `keys`: rows (id, pos, norm_hash[, minhash]) with unique pos; it is materialized first unless it
    is already (the near-duplicate search reads it three times; its size sets the partitions).
    `partitions`: of every shuffle (default: one per 256 MB of keys, at least one per CPU).
    `local_max_edges`: up to this many verified near-duplicate pairs are grouped by one worker in
    one step, more by distributed rounds.
    """
    exact, near = shuffle_steps(dedup)
    keys = uncompressed(materialized(keys))
    partitions = partitions or max(cluster_cpus(), -(-keys.size_bytes() // PARTITION_BYTES))
    rows = per_block(keys, functools.partial(prepare, bands=near.bands if near else None))
    for step in exact:
        rows = per_key(rows, [step.key], functools.partial(mark, key=step.key, reason=step.reason), partitions)
    rows = per_block(rows, unmarked)
    if near is None:
        return per_block(rows, marked_losers)
    rows = materialized(rows)  # read twice: for its losers, and for the near-duplicate search among the others
    edges = near_edges(keys, rows, near, partitions)
    return per_block(rows, marked_losers).union(per_block(star_edges(edges, partitions, local_max_edges), star_losers))
