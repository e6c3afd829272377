"""Exact and near-duplicate removal across workers: `near_dup.find_all_duplicates` without a driver
that holds every row's keys.

`duplicate_losers(keys, dedup, near_dup)` takes the pre-pass keys as a Ray Dataset (id, pos,
norm_hash, and minhash when near-duplicate removal is on) and returns the same rejected rows
(pos, reason, detail) as the driver implementation, as a Dataset. Every step is a keyed shuffle
(`factory.shuffle.per_key`) whose partition function reuses the driver code on its partition:

1. ids, then normalised captions: rows shuffled by the key meet their whole group, and
   `dedup.split_duplicates` marks all but the first (by pos) of each group.
2. near duplicates, among the rows left: each row's 16 LSH band keys (not its signature) are
   shuffled by key, and each bucket pairs every row with the next `max_bucket_span` rows of the
   bucket in pos order, exactly the pairs `near_dup.candidate_pairs` makes.
3. the pairs' endpoints meet their signatures in a join by pos (each signature travels once), the two
   halves of a pair meet by pair, and `estimated_jaccard >= threshold` is checked there.
4. the verified pairs are edges between keeper keys (`keeper_keys`: binary values ordered as
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
from factory.curate.components import U, V, edges_table, star_edges
from factory.curate.dedup import split_duplicates
from factory.curate.keeper_keys import key_pos_id, keeper_keys
from factory.curate.near_dup import band_keys, check_params
from factory.shuffle import materialized, per_block, per_key, cluster_cpus

BANDS, BAND, BKEY = "bands", "band", "band_key"  # a row's LSH band keys; one (band, key) per exploded row
OTHER, NODE, SIG = "other", "node", "sig"  # a pair endpoint's other row; keeper key; signature bytes
I, J, SIDE = "i", "j", "side"  # a candidate pair (pos i < pos j), and which of its rows a record holds
LOSERS = pa.schema([pa.field(S.POS, pa.int64()), pa.field(S.REASON, pa.string()), pa.field(S.DETAIL, pa.string())])
MEET = pa.schema([pa.field(S.POS, pa.int64()), pa.field(OTHER, pa.int64()), pa.field(NODE, pa.binary()),
                  pa.field(SIG, pa.large_binary())])
SIDES = pa.schema([pa.field(I, pa.int64()), pa.field(J, pa.int64()), pa.field(SIDE, pa.int8()),
                   pa.field(NODE, pa.binary()), pa.field(SIG, pa.large_binary())])
PARTITION_BYTES = 256 * 2**20


def signature_matrix(col) -> np.ndarray:
    """(n, num_perm) uint32 of a fixed_size_list<uint32> column (chunked or not, sliced or not)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size)


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


def explode(block: pa.Table) -> pa.Table:
    """(band, band key, pos) of every band of every row not marked: what the LSH buckets are made of."""
    block = block.filter(pc.is_null(block.column(S.REASON)))
    keys = signature_matrix(block.column(BANDS)) if block.num_rows else np.empty((0, 1), np.int64)
    n, bands = keys.shape
    return pa.table({BAND: pa.array(np.tile(np.arange(bands, dtype=np.int16), n)), BKEY: pa.array(keys.reshape(-1)),
                     S.POS: pa.array(np.repeat(block.column(S.POS).to_numpy(), bands))})


def _distinct_pairs(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    new = np.ones(len(i), dtype=bool)
    new[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[new], j[new]


def bucket_pairs(part: pa.Table, span: int) -> pa.Table:
    """Both endpoints (pos, other) of every candidate pair of a partition's buckets: in each bucket,
    rows in pos order, each with the next `span` rows (near_dup.candidate_pairs' pairs)."""
    band, bkey, pos = (part.column(c).to_numpy() for c in (BAND, BKEY, S.POS))
    order = np.lexsort((pos, bkey, band))
    band, bkey, pos = band[order], bkey[order], pos[order]
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for d in range(1, span + 1):
        same = (bkey[d:] == bkey[:-d]) & (band[d:] == band[:-d])
        if not same.any():
            break
        found_i.append(pos[:-d][same])
        found_j.append(pos[d:][same])
    i, j = _distinct_pairs(np.concatenate(found_i), np.concatenate(found_j))
    n = 2 * len(i)
    return pa.table({S.POS: np.concatenate([i, j]), OTHER: np.concatenate([j, i]), NODE: pa.nulls(n, pa.binary()),
                     SIG: pa.nulls(n, pa.large_binary())}, schema=MEET)


def home_rows(block: pa.Table) -> pa.Table:
    """(pos, keeper key, signature bytes) of each row: what a pair endpoint comes to fetch."""
    sig = signature_matrix(block.column(S.MINHASH))
    width = sig.shape[1] * 4
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())])
    return pa.table({S.POS: block.column(S.POS), OTHER: pa.nulls(block.num_rows, pa.int64()),
                     NODE: keeper_keys(block.column(S.ID), block.column(S.POS).to_numpy()),
                     SIG: pc.cast(raw, pa.large_binary())}, schema=MEET)


def attach(part: pa.Table) -> pa.Table:
    """Each distinct pair endpoint of a partition with its row's keeper key and signature (a join by pos)."""
    home = part.filter(pc.is_valid(part.column(SIG)))
    ends = part.filter(pc.is_null(part.column(SIG)))
    pos, other = _distinct_pairs(ends.column(S.POS).to_numpy(), ends.column(OTHER).to_numpy())
    home_pos = home.column(S.POS).to_numpy()
    order = np.argsort(home_pos)
    at = order[np.clip(np.searchsorted(home_pos[order], pos), 0, max(len(order) - 1, 0))] if len(order) else order
    if len(pos) and not np.array_equal(home_pos[at], pos):
        raise RuntimeError("a candidate pair names a pos that is not among the keys (pos must be unique)")
    at = pa.array(at, pa.int64())
    return pa.table({I: np.minimum(pos, other), J: np.maximum(pos, other), SIDE: (pos > other).astype(np.int8),
                     NODE: home.column(NODE).take(at), SIG: home.column(SIG).take(at)}, schema=SIDES)


def _bytes_matrix(col, rows: int) -> np.ndarray:
    """(rows, width) uint8 of a large_binary column whose values all have one width."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = np.frombuffer(col.buffers()[1], np.int64)[col.offset : col.offset + rows + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(rows, -1)


def verify(part: pa.Table, threshold: float) -> pa.Table:
    """Edges (keeper keys) of the pairs whose signatures agree on at least `threshold` of their values
    (near_dup.estimated_jaccard, compared as the driver does)."""
    part = part.sort_by([(I, "ascending"), (J, "ascending"), (SIDE, "ascending")])
    m = part.num_rows // 2
    first, second = part.take(pa.array(np.arange(0, 2 * m, 2))), part.take(pa.array(np.arange(1, 2 * m, 2)))
    if part.num_rows % 2 or not (first.column(I).equals(second.column(I)) and first.column(J).equals(second.column(J))):
        raise RuntimeError("a candidate pair did not meet both of its rows")
    a = _bytes_matrix(first.column(SIG), m).view(np.uint32)
    b = _bytes_matrix(second.column(SIG), m).view(np.uint32)
    agree = (a == b).mean(axis=1) if m else np.empty(0)
    ok = pa.array(agree >= threshold)
    return edges_table(pc.filter(first.column(NODE), ok).combine_chunks(), pc.filter(second.column(NODE), ok).combine_chunks())


def star_losers(block: pa.Table) -> pa.Table:
    """(pos, near_duplicate, "near duplicate of id K") of each node u whose component's keeper is v."""
    pos = [key_pos_id(k)[0] for k in block.column(U).to_pylist()]
    detail = [f"near duplicate of id {key_pos_id(k)[1]}" for k in block.column(V).to_pylist()]
    return pa.table({S.POS: pa.array(pos, pa.int64()), S.REASON: pa.array([S.R_NEAR_DUP] * len(pos), pa.string()),
                     S.DETAIL: pa.array(detail, pa.string())}, schema=LOSERS)


def exact_steps(dedup: dict) -> list[tuple[str, str]]:
    steps = [(S.ID, S.R_DUP_ID)] if dedup.get("ids", True) else []
    return steps + ([(S.NORM_HASH, S.R_DUP_CAPTION)] if dedup.get("captions", True) else [])


def near_losers(keys: Dataset, survivors: Dataset, near_dup: dict, partitions: int, local_max_edges: int) -> Dataset:
    """Steps 2-4: the near-duplicate losers among `survivors` (rows with band keys, reason null)."""
    span = int(near_dup.get("max_bucket_span", 32))
    ends = per_key(per_block(survivors, explode), [BKEY], functools.partial(bucket_pairs, span=span), partitions)
    sides = per_key(per_block(keys, home_rows).union(ends), [S.POS], attach, partitions)
    edges = per_key(sides, [I], functools.partial(verify, threshold=float(near_dup["threshold"])), partitions)
    return per_block(star_edges(edges, partitions, local_max_edges), star_losers)


def duplicate_losers(keys: Dataset, dedup: dict, near_dup: dict | None, partitions: int | None = None,
                     local_max_edges: int = 2_000_000) -> Dataset:
    """(pos, reason, detail) of every row that loses an exact-duplicate group (curate.dedup), then,
    among the rows left, a near-duplicate group (curate.near_dup, when enabled): as a set, equal to
    `near_dup.find_all_duplicates` on all the keys in one table.

    `keys`: rows (id, pos, norm_hash[, minhash]) with unique pos; it is read twice, so it is
    materialized first unless it is already. `partitions`: of every shuffle (default: one per
    256 MB of keys, at least one per CPU). `local_max_edges`: up to this many verified near-duplicate
    pairs are grouped by one worker in one step, more by distributed rounds.
    """
    near = bool((near_dup or {}).get("enabled"))
    if near:
        check_params(near_dup)
    keys = materialized(keys)
    partitions = partitions or max(cluster_cpus(), -(-keys.size_bytes() // PARTITION_BYTES))
    rows = per_block(keys, functools.partial(prepare, bands=int(near_dup["bands"]) if near else None))
    for key, reason in exact_steps(dedup):
        rows = per_key(rows, [key], functools.partial(mark, key=key, reason=reason), partitions)
    rows = materialized(per_block(rows, unmarked))
    losers = per_block(rows, marked_losers)
    if not near:
        return losers
    return losers.union(near_losers(keys, rows, near_dup, partitions, local_max_edges))

