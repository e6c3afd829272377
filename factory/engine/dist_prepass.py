"""The pre-pass's Ray part for inputs bigger than ray.local_scan_mb: the deduplicators' keys stay
in the object store, the losers are found by keyed shuffles (dist_dedup) and written by the
workers; the kept (id, norm_hash) rows stay in the object store too. The driver receives per-block
counts and samples and the losers' counts by reason.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.dataset import MaterializedDataset

from factory import schema as S
from factory.curate.dedup import LOSERS
from factory.engine import adapter
from factory.engine.dist_dedup import duplicate_losers
from factory.engine.placement import Placement
from factory.engine.shuffle import cluster_cpus, materialized, partitions_for, per_block, per_key
from factory.engine.stream import files_dataset
from factory.io import files
from factory.stage import Deduplicator, Stage

LOST = "lost"  # int8 in the anti-join: 1 on a loser's row
SMALL_COLUMNS = ["sample", "rows", "reasons", "counts", "error"]  # what the driver reads of the scan's rows
KEY_BLOCK_BYTES = 128 * 2**20  # keys per block into the shuffles (dist_dedup.PARTITION_BYTES is 256 MB a partition)
SMALL_WINDOW = 16  # blocks whose counts and samples the driver fetches at once (a sample: up to 2,000 captions)
LOSER_ROW_GROUP = 64 * 1024  # as prepass.write_losers: a stream batch reads only the row groups of its positions


def scan_blocks(paths: list[str], stages: list[Stage], cpu: float) -> MaterializedDataset:
    """The scan's rows (prepass.ScanKeys: one per block, its keys as Arrow IPC) in the object store."""
    ds = files_dataset(paths)
    for stage in stages:
        ds = adapter.apply(ds, stage, Placement(cpus=cpu))
    return ds.materialize()


@ray.remote
def _small(block: pa.Table) -> pa.Table:
    return block.select(SMALL_COLUMNS)


def small_rows(scanned: MaterializedDataset, window: int = SMALL_WINDOW) -> Iterator[pa.Table]:
    """The scan's rows without their keys (which stay in the object store): one small task a block,
    `window` blocks at a time, so that the driver holds one window's samples, not every block's."""
    blocks = scanned.to_arrow_refs()
    for start in range(0, len(blocks), window):
        yield from ray.get([_small.remote(ref) for ref in blocks[start:start + window]])


@ray.remote
def _keys(from_ipc, empty: pa.Table, *blocks: pa.Table) -> pa.Table:
    parts = [t for block in blocks for t in (from_ipc(b) for b in block.column("ipc").to_pylist()) if t.num_rows]
    return pa.concat_tables(parts, promote_options="default") if parts else empty


def runs(sizes: list[int], n: int) -> list[list[int]]:
    """The indices of `sizes` in at most `n` contiguous runs of about equal bytes (none empty)."""
    total, out, before = sum(sizes), [[] for _ in range(n)], 0
    for i, size in enumerate(sizes):
        out[min(n - 1, before * n // total) if total else i * n // len(sizes)].append(i)
        before += size
    return [r for r in out if r]


def keys_dataset(scanned: MaterializedDataset, from_ipc, empty: pa.Table, block_bytes: int = KEY_BLOCK_BYTES) -> MaterializedDataset:
    """The keys of the scanned blocks, made and kept on the workers: adjacent blocks joined into
    about `block_bytes` each (at least two blocks per CPU, never more than were scanned). Every
    shuffle after it has one map output per block and partition, all owned by the driver: at 10M
    captions in 500 files, 500 blocks × 22 partitions each, where ~45 blocks of 128 MB carry the same keys."""
    entries = [e for bundle in scanned.iter_internal_ref_bundles() for e in bundle.blocks]
    sizes = [e.metadata.size_bytes or 0 for e in entries]
    n = min(len(entries), max(2 * cluster_cpus(), -(-sum(sizes) // block_bytes)))
    return ray.data.from_arrow_refs([_keys.remote(from_ipc, empty, *(entries[i].ref for i in run)) for run in runs(sizes, n)])


def _tag(block: pa.Table, lost: int) -> pa.Table:
    n = block.num_rows
    if lost:
        return pa.table({S.ID: pa.nulls(n, pa.string()), S.POS: block.column(S.POS), S.NORM_HASH: pa.nulls(n, pa.int64()),
                         LOST: pa.array(np.ones(n, np.int8))})
    return pa.table({S.ID: block.column(S.ID).cast(pa.string()), S.POS: block.column(S.POS), S.NORM_HASH: block.column(S.NORM_HASH),
                     LOST: pa.array(np.zeros(n, np.int8))})


def _survivors(part: pa.Table) -> pa.Table:
    """The rows of a partition (all rows of its positions) whose pos no loser names."""
    lost = part.filter(pc.equal(part.column(LOST), 1)).column(S.POS)
    rows = part.filter(pc.equal(part.column(LOST), 0))
    return rows.filter(pc.invert(pc.is_in(rows.column(S.POS), value_set=lost.combine_chunks()))).select([S.ID, S.NORM_HASH])


KEPT = pa.schema([pa.field(S.ID, pa.string()), pa.field(S.NORM_HASH, pa.int64())])


def kept_rows(keys, losers: MaterializedDataset, rows: int) -> MaterializedDataset:
    """(id, norm_hash) of the keys' rows that lose no group, in the object store: an anti-join by
    pos on the workers."""
    both = per_block(keys, functools.partial(_tag, lost=0)).union(per_block(losers, functools.partial(_tag, lost=1)))
    return materialized(per_key(both, [S.POS], _survivors, partitions_for(rows)))


def gather_kept(kept: MaterializedDataset) -> pa.Table:
    """The kept rows on the driver (tests)."""
    parts = [t for t in ray.get(kept.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts).cast(KEPT).combine_chunks() if parts else KEPT.empty_table()


def find_losers(keys, dedup: list[Deduplicator]) -> MaterializedDataset:
    """(pos, reason, detail) of the rows that lose a group, in the object store (dist_dedup)."""
    return materialized(duplicate_losers(keys, dedup))


@ray.remote
def _reason_counts(block: pa.Table) -> dict[str, int]:
    t = block.group_by(S.REASON).aggregate([(S.REASON, "count")])
    return dict(zip(t.column(S.REASON).to_pylist(), t.column(f"{S.REASON}_count").to_pylist()))


def counts_by_reason(losers: MaterializedDataset) -> dict[str, int]:
    """Losers per reason: one small dict a block back to the driver."""
    out: dict[str, int] = {}
    for counts in ray.get([_reason_counts.remote(ref) for ref in losers.to_arrow_refs()]):
        for reason, n in counts.items():
            out[reason] = out.get(reason, 0) + n
    return out


@ray.remote
def _among(block: pa.Table, wanted: pa.Array) -> list[int]:
    return block.filter(pc.is_in(block.column(S.POS), value_set=wanted)).column(S.POS).to_pylist()


def lost_among(losers: MaterializedDataset, pos: np.ndarray) -> set[int]:
    """Which of the positions `pos` (a few: the sample's) lose a group."""
    if len(pos) == 0:
        return set()
    wanted = pa.array(pos, pa.int64())
    return {p for found in ray.get([_among.remote(ref, wanted) for ref in losers.to_arrow_refs()]) for p in found}


def gather(losers: MaterializedDataset) -> pa.Table:
    """All losers on the driver: for tests and small inputs only."""
    parts = [t for t in ray.get(losers.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts).cast(LOSERS) if parts else LOSERS.empty_table()


def _write_sorted(block: pa.Table, directory: str) -> pa.Table:
    if block.num_rows == 0:
        return pa.table({"rows": [0]})
    block = block.sort_by(S.POS)
    name = f"part-{block.column(S.POS)[0].as_py():020d}.parquet"
    files.write_parquet_atomic(files.join(directory, name), block.cast(LOSERS), make_parent=False, row_group_size=LOSER_ROW_GROUP)
    return pa.table({"rows": [block.num_rows]})


def write_losers(losers: MaterializedDataset, directory: str) -> int:
    """The losers as a folder of Parquet files sorted by pos (each file a range of positions, in
    small row groups: MarkDuplicates reads a folder as it reads one file), written by the workers."""
    files.delete_file(directory)
    files.delete_dir(directory)
    files.makedirs(directory)
    n = 0
    if losers.count():
        written = per_block(losers.sort(S.POS), functools.partial(_write_sorted, directory=directory)).materialize()
        n = sum(int(t.column("rows").to_numpy().sum()) for t in ray.get(written.to_arrow_refs()))
    if n == 0:  # MarkDuplicates needs the schema: one empty file
        files.write_parquet_atomic(files.join(directory, "part-empty.parquet"), LOSERS.empty_table(), make_parent=False)
    return n
