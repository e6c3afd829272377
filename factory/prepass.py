"""The pre-pass: one cheap read of the whole input before anything is generated, shared by the run
and `estimate`. It counts the rows, runs the filters that come before deduplication, gathers the
deduplicators' keys and decides which rows lose a duplicate group (the first row in input order,
or the smallest id for near duplicates, wins — never the scheduling), and keeps a uniform sample
of the curated captions (for the estimate's calibration). Reading fails here, in one line, for a
file that cannot be read at all.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.curate.dedup import LOSERS, dedup_keys
from factory.curate.near_dup import without_rejected
from factory.engine import stream
from factory.errors import InputError
from factory.io import files
from factory.io.read import compression
from factory.io.read_files import ReadFiles, file_list
from factory.pipeline import Pipeline
from factory.stage import Deduplicator, Stage

log = logging.getLogger(__name__)


def priority(pos: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-random rank of each row: the `k` smallest form a uniform sample of any set of
    rows, found block by block and merged (bottom-k sampling)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).digest(), "little")
                     for p in pos.tolist()], dtype=np.uint64)


@dataclass
class ScanKeys(Stage):
    """Stage (pre-pass): caption rows → one row per block: the deduplicators' keys of the rows that
    pass the early filters (as Arrow IPC, so blocks of any size travel as one value), the counts of
    rows rejected by reason, the block's bottom-k sample, and any unreadable-file message."""

    name: ClassVar[str] = "scan"
    default_batch_rows: ClassVar[int | None] = None  # a whole block at a time

    filters: list = field(default_factory=list)  # early caption filters
    dedup: list = field(default_factory=list)  # deduplicators (their key columns)
    sample_rows: int = 0
    seed: int = 0

    def process(self, batch: pa.Table) -> pa.Table:
        for f in self.filters:
            batch = f(batch)
        unreadable = batch.filter(pc.equal(batch.column(S.REASON), S.R_UNREADABLE)).column(S.DETAIL).to_pylist()
        rejected = batch.filter(pc.and_(pc.is_valid(batch.column(S.REASON)), pc.not_equal(batch.column(S.REASON), S.R_UNREADABLE)))
        counts = rejected.group_by(S.REASON).aggregate([(S.REASON, "count")])
        keys = dedup_keys(batch)
        valid = batch.filter(pc.is_null(batch.column(S.REASON)))  # the rows dedup_keys kept, in order
        captions = valid.column(S.CAPTION).to_pylist()
        for d in self.dedup:
            for name, column in d.key_columns(captions).items():
                keys = keys.append_column(name, column)
        sample = self.bottom_k(valid)
        return pa.table({"ipc": [to_ipc(keys)], "sample": [to_ipc(sample)], "rows": [batch.num_rows - len(unreadable)],
                         "reasons": [counts.column(S.REASON).to_pylist()], "counts": [counts.column(f"{S.REASON}_count").to_pylist()],
                         "error": [unreadable[0] if unreadable else None]})

    def bottom_k(self, valid: pa.Table) -> pa.Table:
        """(pos, priority, caption) of the block's `sample_rows` rows of smallest priority."""
        pos = valid.column(S.POS).to_numpy()
        prio = priority(pos, self.seed)
        take = np.argsort(prio, kind="stable")[: self.sample_rows]
        return pa.table({S.POS: pos[take], "priority": prio[take], S.CAPTION: valid.column(S.CAPTION).take(pa.array(take))})


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


@dataclass
class Prepass:
    """What the pre-pass found."""

    n_read: int
    rejected_by_reason: dict[str, int]  # by the reader and the early filters
    losers: pa.Table  # (pos, reason, detail) of the rows that lose a duplicate group
    kept: pa.Table  # (id, norm_hash) of the rows that pass the early filters and deduplication
    sample: list[str]  # a uniform sample of the kept captions (at most sample_rows)

    def duplicates_by_reason(self) -> dict[str, int]:
        reasons = self.losers.column(S.REASON).to_pylist()
        return {r: reasons.count(r) for r in dict.fromkeys(reasons)}


# What a compressed file counts as, times its size, where the pre-pass decides between this process
# and tasks: text expands 3-10 times, and a file of repeated lines far more.
COMPRESSED_EXPANSION = 10


def input_bytes(paths: list[str]) -> int:
    """The input's size as the pre-pass weighs it (compressed files by COMPRESSED_EXPANSION)."""
    return sum(files.size(p) * (COMPRESSED_EXPANSION if compression(p) else 1) for p in paths)


def blocks(paths: list[str], scan: ScanKeys, cpu: float, local_max_mb: float) -> Iterator[pa.Table]:
    """ScanKeys' rows for every file: in this process for inputs up to `local_max_mb` (tasks would
    cost more than reading them), else in Ray tasks. Either way each file is read as a stream, a
    batch of rows at a time."""
    if input_bytes(paths) <= local_max_mb * 2**20:
        reader = ReadFiles()
        for table in reader(file_list(paths)):
            yield scan(table)
    else:
        yield from stream.map_files(paths, [ReadFiles(), scan], cpu)


def run_prepass(paths: list[str], pipeline: Pipeline, cpu: float, local_max_mb: float, sample_rows: int = 0,
                seed: int = 0) -> Prepass:
    """The pre-pass over `paths` (see the module's docstring). Raises InputError for the first
    unreadable file, or when there is no caption row at all."""
    dedup = pipeline.deduplicators()
    scan = ScanKeys(filters=pipeline.early_filters(), dedup=dedup, sample_rows=sample_rows, seed=seed)
    keys, samples, n_read, counts = [], [], 0, {}
    for block in blocks(paths, scan, cpu, local_max_mb):
        for row in block.to_pylist():
            if row["error"]:
                raise InputError(row["error"])
            n_read += row["rows"]
            for reason, n in zip(row["reasons"], row["counts"]):
                counts[reason] = counts.get(reason, 0) + n
            keys.append(from_ipc(row["ipc"]))
            samples.append(from_ipc(row["sample"]))
    if n_read == 0:
        raise InputError(f"input is empty: no caption rows in {', '.join(paths[:3])}")
    keys = pa.concat_tables(keys, promote_options="default") if keys else dedup_keys(S.CAPTION_ROW.empty_table())
    losers = find_losers(keys, dedup)
    kept = without_rejected(keys, losers).select([S.ID, S.NORM_HASH]).combine_chunks()
    return Prepass(n_read, dict(sorted(counts.items(), key=lambda kv: -kv[1])), losers, kept,
                   merged_sample(samples, losers, sample_rows))


def find_losers(keys: pa.Table, dedup: list[Deduplicator]) -> pa.Table:
    """Each deduplicator in turn, on the rows the ones before it kept."""
    parts = []
    for d in dedup:
        lost = d.losers(keys)
        parts.append(lost)
        keys = without_rejected(keys, lost)
    return pa.concat_tables(parts) if parts else LOSERS.empty_table()


def merged_sample(samples: list[pa.Table], losers: pa.Table, k: int) -> list[str]:
    """The kept captions among the `k` rows of smallest priority over all blocks, in that order."""
    if not k or not samples:
        return []
    t = pa.concat_tables(samples).sort_by([("priority", "ascending"), (S.POS, "ascending")]).slice(0, k)
    t = t.filter(pc.invert(pc.is_in(t.column(S.POS), value_set=losers.column(S.POS))))
    return t.column(S.CAPTION).to_pylist()


def write_losers(losers: pa.Table, path: str) -> None:
    """The losers sorted by pos in small row groups, so that each batch of the stream reads only the
    row groups that cover its positions (see curate.dedup.MarkDuplicates)."""
    files.write_parquet_atomic(path, losers.sort_by(S.POS), row_group_size=64 * 1024)
