"""Near-duplicate pairs across workers: `near_dup.candidate_pairs` and `estimated_jaccard >= threshold`
on signatures that never meet in one process, moving as little of them as the exact result allows.

A pool of web captions makes far more candidate pairs than rows (16 a row in the planted benchmark
pool, whose buckets are big), so signatures travel to buckets, never to pairs:

1. buckets: each row's band keys (band, key, pos; 17 bytes a band) are shuffled by key; only the
   members of buckets of two or more rows go on ("memberships").
2. sketches: memberships meet their row's sketch (the low 4 bits of each signature value, 64 bytes)
   in a join by pos, then go back to their bucket, where every candidate pair (each member with the
   next `max_bucket_span` members in pos order) is screened: two values that are equal have equal
   low bits, so a pair whose sketches agree on fewer than `threshold` of the values cannot pass
   (3.3M candidate pairs in a 200,000-caption pool, 36,000 left, 32,700 true).
3. verification: the endpoints of the pairs left meet their full signature and keeper key in a
   join by pos (a Bloom filter of the endpoints keeps the other rows' signatures home), the two
   halves of each pair meet, and the driver's test decides: `(sig_a == sig_b).mean() >= threshold`.
"""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Dataset

from factory import schema as S
from factory.curate.keeper_keys import keeper_keys
from factory.engine import bloom
from factory.engine.components import distinct_pairs, edges_table
from factory.engine.shuffle import materialized, per_block, per_key
from factory.stage import NearStep

BANDS, BAND, BKEY = "bands", "band", "band_key"  # a row's LSH band keys; one (band, key) per exploded row
SKETCH, OTHER, NODE, SIG = "sketch", "other", "node", "sig"  # low bits; a pair's other row; keeper key; signature
I, J, SIDE = "i", "j", "side"  # a candidate pair (pos i < pos j), and which of its rows a record holds
EXPLODED = pa.schema([pa.field(BAND, pa.int16()), pa.field(BKEY, pa.int64()), pa.field(S.POS, pa.int64())])
MEMBERS = pa.schema(list(EXPLODED) + [pa.field(SKETCH, pa.binary())])
MEET = pa.schema([pa.field(S.POS, pa.int64()), pa.field(OTHER, pa.int64()), pa.field(NODE, pa.binary()),
                  pa.field(SIG, pa.large_binary())])
SIDES = pa.schema([pa.field(I, pa.int64()), pa.field(J, pa.int64()), pa.field(SIDE, pa.int8()),
                   pa.field(NODE, pa.binary()), pa.field(SIG, pa.large_binary())])


def signature_matrix(col) -> np.ndarray:
    """(n, width) numpy array of a fixed_size_list column (chunked or not, sliced or not)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size)


def bytes_column(rows: np.ndarray, large: bool = False) -> pa.Array:
    """Each row of a 2-D numpy array as one binary value."""
    rows = np.ascontiguousarray(rows)
    width = rows.shape[1] * rows.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(rows), [None, pa.py_buffer(rows.tobytes())])
    return pc.cast(fixed, pa.large_binary() if large else pa.binary())


def bytes_matrix(col, dtype) -> np.ndarray:
    """(n, width) of a binary or large_binary column whose values all have one width: bytes_column's inverse."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], np.int64 if pa.types.is_large_binary(col.type) else np.int32)[col.offset : col.offset + n + 1]
    if n == 0:
        return np.empty((0, 0), dtype)
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view(dtype).reshape(n, -1)


def explode(block: pa.Table) -> pa.Table:
    """(band, band key, pos) of every band of every row not marked: what the LSH buckets are made of."""
    block = block.filter(pc.is_null(block.column(S.REASON)))
    keys = signature_matrix(block.column(BANDS)) if block.num_rows else np.empty((0, 1), np.int64)
    n, bands = keys.shape
    return pa.table({BAND: pa.array(np.tile(np.arange(bands, dtype=np.int16), n)), BKEY: pa.array(keys.reshape(-1)),
                     S.POS: pa.array(np.repeat(block.column(S.POS).to_numpy(), bands))}, schema=EXPLODED)


def _buckets(part: pa.Table, by_pos: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The partition's rows sorted by (band, key[, pos]), as (order, band, key, pos)."""
    band, bkey, pos = (part.column(c).to_numpy() for c in (BAND, BKEY, S.POS))
    order = np.lexsort((pos, bkey, band) if by_pos else (bkey, band))
    return order, band[order], bkey[order], pos[order]


def bucket_members(part: pa.Table) -> pa.Table:
    """The rows of the partition's buckets that hold two or more rows."""
    order, band, bkey, _ = _buckets(part, by_pos=False)
    same = (band[1:] == band[:-1]) & (bkey[1:] == bkey[:-1])
    shared = np.zeros(len(order), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    members = part.select(EXPLODED.names).take(pa.array(order[shared]))
    return members.append_column(SKETCH, pa.nulls(members.num_rows, pa.binary()))


def sketch(sig: np.ndarray) -> np.ndarray:
    """The low 4 bits of each signature value, two to a byte, padded with 0 nibbles to whole 8-byte words."""
    low = (sig & 0xF).astype(np.uint8)
    pad = -low.shape[1] % 16
    low = np.concatenate([low, np.zeros((len(low), pad), np.uint8)], axis=1)
    return (low[:, 0::2] << 4) | low[:, 1::2]


_LOW_BITS = np.uint64(0x1111111111111111)


def sketch_agreement(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    """Per row pair (uint64 words of two sketches): the fraction of the `width` signature values whose sketches agree."""
    x = a ^ b
    x |= x >> np.uint64(1)
    x |= x >> np.uint64(2)
    differ = np.bitwise_count(x & _LOW_BITS).sum(axis=1, dtype=np.int64)  # one bit per nibble that differs
    return (width - differ) / width  # padding nibbles never differ


def sketch_rows(block: pa.Table) -> pa.Table:
    """(pos, sketch) of each row."""
    sketch_bytes = sketch(signature_matrix(block.column(S.MINHASH)))
    n = block.num_rows
    return pa.table({BAND: pa.nulls(n, pa.int16()), BKEY: pa.nulls(n, pa.int64()), S.POS: block.column(S.POS),
                     SKETCH: bytes_column(sketch_bytes)}, schema=MEMBERS)


def _lookup(home_pos: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Index in `home_pos` of each of `pos` (every one must be there)."""
    order = np.argsort(home_pos)
    at = order[np.clip(np.searchsorted(home_pos[order], pos), 0, max(len(order) - 1, 0))] if len(order) else order
    if len(pos) and not np.array_equal(home_pos[at], pos):
        raise RuntimeError("a bucket or pair names a pos that is not among the keys (pos must be unique)")
    return at


def attach_sketch(part: pa.Table) -> pa.Table:
    """Memberships with their row's sketch (a join by pos)."""
    home = part.filter(pc.is_valid(part.column(SKETCH)))
    members = part.filter(pc.is_null(part.column(SKETCH)))
    at = _lookup(home.column(S.POS).to_numpy(), members.column(S.POS).to_numpy())
    return members.set_column(3, SKETCH, home.column(SKETCH).take(pa.array(at, pa.int64())))


def bucket_candidates(part: pa.Table, span: int, threshold: float, width: int) -> pa.Table:
    """Both endpoints (pos, other) of each candidate pair of the partition's buckets whose sketches
    agree on at least `threshold` of the values: in each bucket, rows in pos order, each with the
    next `span` rows (near_dup.candidate_pairs' pairs)."""
    order, band, bkey, pos = _buckets(part)
    sketches = bytes_matrix(part.column(SKETCH), np.uint64)[order] if len(order) else np.empty((0, 1), np.uint64)
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for d in range(1, span + 1):
        at = np.flatnonzero((bkey[d:] == bkey[:-d]) & (band[d:] == band[:-d]))
        if len(at) == 0:
            break
        close = sketch_agreement(sketches[at], sketches[at + d], width) >= threshold
        found_i.append(pos[at[close]])
        found_j.append(pos[at[close] + d])
    i, j = distinct_pairs(np.concatenate(found_i), np.concatenate(found_j))
    n = 2 * len(i)
    return pa.table({S.POS: np.concatenate([i, j]), OTHER: np.concatenate([j, i]), NODE: pa.nulls(n, pa.binary()),
                     SIG: pa.nulls(n, pa.large_binary())}, schema=MEET)


def home_rows(block: pa.Table, endpoints: tuple) -> pa.Table:
    """(pos, keeper key, signature bytes) of each row that may be a pair endpoint (`endpoints`: a
    Bloom filter's reference and size): what the endpoints come to fetch."""
    bits, log2_bits = endpoints
    block = block.filter(pa.array(bloom.may_contain(ray.get(bits), log2_bits, block.column(S.POS).to_numpy())))
    return pa.table({S.POS: block.column(S.POS), OTHER: pa.nulls(block.num_rows, pa.int64()),
                     NODE: keeper_keys(block.column(S.ID), block.column(S.POS).to_numpy()),
                     SIG: bytes_column(signature_matrix(block.column(S.MINHASH)), large=True)}, schema=MEET)


def attach(part: pa.Table) -> pa.Table:
    """Each distinct pair endpoint of a partition with its row's keeper key and signature (a join by pos)."""
    home = part.filter(pc.is_valid(part.column(SIG)))
    ends = part.filter(pc.is_null(part.column(SIG)))
    pos, other = distinct_pairs(ends.column(S.POS).to_numpy(), ends.column(OTHER).to_numpy())
    at = pa.array(_lookup(home.column(S.POS).to_numpy(), pos), pa.int64())
    return pa.table({I: np.minimum(pos, other), J: np.maximum(pos, other), SIDE: (pos > other).astype(np.int8),
                     NODE: home.column(NODE).take(at), SIG: home.column(SIG).take(at)}, schema=SIDES)


def verify(part: pa.Table, threshold: float) -> pa.Table:
    """Edges (keeper keys) of the pairs whose signatures agree on at least `threshold` of their values
    (near_dup.estimated_jaccard, compared as the driver does)."""
    part = part.sort_by([(I, "ascending"), (J, "ascending"), (SIDE, "ascending")])
    m = part.num_rows // 2
    first, second = part.take(pa.array(np.arange(0, 2 * m, 2))), part.take(pa.array(np.arange(1, 2 * m, 2)))
    if part.num_rows % 2 or not (first.column(I).equals(second.column(I)) and first.column(J).equals(second.column(J))):
        raise RuntimeError("a candidate pair did not meet both of its rows")
    agree = (bytes_matrix(first.column(SIG), np.uint32) == bytes_matrix(second.column(SIG), np.uint32)).mean(axis=1) if m else np.empty(0)
    ok = pa.array(agree >= threshold)
    return edges_table(pc.filter(first.column(NODE), ok).combine_chunks(), pc.filter(second.column(NODE), ok).combine_chunks())


def near_edges(keys: Dataset, rows: Dataset, near: NearStep, partitions: int) -> Dataset:
    """Edges (u, v) between the keeper keys of every verified near-duplicate pair among the rows of
    `rows` not marked (rows with band keys; `keys`: id, pos, minhash of them all)."""
    span, threshold, width = near.max_bucket_span, near.threshold, keys.schema().base_schema.field(S.MINHASH).type.list_size
    members = per_key(per_block(rows, explode), [BKEY], bucket_members, partitions)
    members = per_key(per_block(keys, sketch_rows).union(members), [S.POS], attach_sketch, partitions)
    ends = materialized(per_key(members, [BKEY], functools.partial(bucket_candidates, span=span, threshold=threshold, width=width), partitions))
    home = per_block(keys, functools.partial(home_rows, endpoints=bloom.build(ends, S.POS)))
    sides = per_key(home.union(ends), [S.POS], attach, partitions)
    return per_key(sides, [I], functools.partial(verify, threshold=threshold), partitions)
