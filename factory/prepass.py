"""The pre-pass: one cheap read of the whole input before anything is generated, shared by the run
and `estimate`. It counts the rows, runs the filters that come before deduplication, gathers the
deduplicators' keys and decides which rows lose a duplicate group (the first row in input order,
or the smallest id for near duplicates, wins — never the scheduling), and keeps a uniform sample
of the curated captions (for the estimate's calibration). Reading fails here, in one line, for a
file that cannot be read at all.

Inputs up to ray.local_scan_mb are scanned and deduplicated in this process. Bigger ones are
scanned in Ray tasks whose keys stay in the object store; the deduplicators' `shuffle_steps` then
run as keyed shuffles across workers (factory/engine/dist_dedup.py): the same losers, and the
driver holds only counts and the sample. The kept (id, norm_hash) rows stay in the object store
too: curation and `estimate` count them, a full run joins them on the workers (engine/dist_resume).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.curate.dedup import LOSERS, dedup_keys
from factory.curate.near_dup import without_rejected
from factory.engine import dist_prepass
from factory.errors import InputError
from factory.io import files
from factory.io.read import compression
from factory.io.read_files import ReadFiles, file_list
from factory.pipeline import Pipeline
from factory.stage import Deduplicator, Stage

if TYPE_CHECKING:  # the engine's type; this module imports no Ray
    from ray.data.dataset import MaterializedDataset

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

    def empty_keys(self) -> pa.Table:
        """The keys' schema with no rows (what a block without valid rows gives)."""
        keys = dedup_keys(S.CAPTION_ROW.empty_table())
        for d in self.dedup:
            for name, column in d.key_columns([]).items():
                keys = keys.append_column(name, column)
        return keys

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
    # (pos, reason, detail) of the rows that lose a duplicate group: a table on the driver, or, for
    # inputs above ray.local_scan_mb, a dataset in Ray's object store (the driver never holds it)
    losers: pa.Table | "MaterializedDataset"
    # (id, norm_hash) of the rows that pass the early filters and deduplication: on the driver or,
    # like the losers, in the object store
    kept: pa.Table | "MaterializedDataset"
    sample: list[str]  # a uniform sample of the kept captions (at most sample_rows)
    duplicates: dict[str, int] = field(default_factory=dict)  # losers by reason

    @property
    def distributed(self) -> bool:
        return not isinstance(self.losers, pa.Table)

    def duplicates_by_reason(self) -> dict[str, int]:
        return self.duplicates

    def n_duplicates(self) -> int:
        return sum(self.duplicates.values())

    def losers_table(self) -> pa.Table:
        """All losers on the driver (tests, small inputs)."""
        return dist_prepass.gather(self.losers) if self.distributed else self.losers

    @property
    def n_kept(self) -> int:
        return self.kept.count() if self.distributed else self.kept.num_rows  # (a dataset's count: its metadata)

    def kept_table(self) -> pa.Table:
        """The kept (id, norm_hash) rows on the driver (tests)."""
        return dist_prepass.gather_kept(self.kept) if self.distributed else self.kept

    def save_losers(self, path: str) -> None:
        """Where the stream's MarkDuplicates reads them: one file (driver) or a folder (workers)."""
        if self.distributed:
            dist_prepass.write_losers(self.losers, path)
        else:
            write_losers(self.losers, path)


def by_reason(losers: pa.Table) -> dict[str, int]:
    reasons = losers.column(S.REASON).to_pylist()
    return {r: reasons.count(r) for r in dict.fromkeys(reasons)}


# What a compressed file counts as, times its size, where the pre-pass decides between this process
# and Ray: text expands 3-10 times, and a file of repeated lines far more.
COMPRESSED_EXPANSION = 10


def input_bytes(paths: list[str]) -> int:
    """The input's size as the pre-pass weighs it (compressed files by COMPRESSED_EXPANSION)."""
    return sum(files.size(p) * (COMPRESSED_EXPANSION if compression(p) else 1) for p in paths)


def blocks(paths: list[str], scan: ScanKeys) -> Iterator[pa.Table]:
    """ScanKeys' rows for every file, in this process (inputs up to ray.local_scan_mb: tasks would
    cost more than reading them)."""
    reader = ReadFiles()
    for table in reader(file_list(paths)):
        yield scan(table)


class Tally:
    """The scan's per-block counts added up on the driver, and its per-block samples merged into one
    bottom-k sample as they come: the driver holds `sample_rows` sampled captions whatever the
    number of blocks (no keys)."""

    def __init__(self, sample_rows: int):
        self.n_read, self.counts, self.sample_rows, self.sample = 0, {}, sample_rows, None

    def add(self, block: pa.Table) -> None:
        for row in block.select(dist_prepass.SMALL_COLUMNS).to_pylist():
            if row["error"]:
                raise InputError(row["error"])
            self.n_read += row["rows"]
            for reason, n in zip(row["reasons"], row["counts"]):
                self.counts[reason] = self.counts.get(reason, 0) + n
            merged = [t for t in (self.sample, from_ipc(row["sample"])) if t is not None]
            self.sample = sample_candidates(merged, self.sample_rows)

    def check(self, paths: list[str]) -> None:
        if self.n_read == 0:
            raise InputError(f"input is empty: no caption rows in {', '.join(paths[:3])}")

    def rejected(self) -> dict[str, int]:
        return dict(sorted(self.counts.items(), key=lambda kv: -kv[1]))


def run_prepass(paths: list[str], pipeline: Pipeline, cpu: float, local_max_mb: float, sample_rows: int = 0,
                seed: int = 0) -> Prepass:
    """The pre-pass over `paths` (see the module's docstring). Raises InputError for the first
    unreadable file, or when there is no caption row at all. Inputs above `local_max_mb` are
    scanned in Ray tasks and deduplicated across workers (distributed_prepass): their keys never
    reach the driver."""
    dedup = pipeline.deduplicators()
    scan = ScanKeys(filters=pipeline.early_filters(), dedup=dedup, sample_rows=sample_rows, seed=seed)
    if input_bytes(paths) > local_max_mb * 2**20:
        return distributed_prepass(paths, scan, dedup, cpu, sample_rows)
    keys, tally = [], Tally(sample_rows)
    for block in blocks(paths, scan):
        tally.add(block)
        keys.extend(from_ipc(b) for b in block.column("ipc").to_pylist())
    tally.check(paths)
    keys = pa.concat_tables(keys, promote_options="default") if keys else dedup_keys(S.CAPTION_ROW.empty_table())
    losers = find_losers(keys, dedup)
    kept = without_rejected(keys, losers).select([S.ID, S.NORM_HASH]).combine_chunks()
    lost = set(losers.column(S.POS).to_pylist())
    return Prepass(tally.n_read, tally.rejected(), losers, kept, merged_sample(tally.sample, lost.__contains__),
                   by_reason(losers))


def distributed_prepass(paths: list[str], scan: ScanKeys, dedup: list[Deduplicator], cpu: float, sample_rows: int) -> Prepass:
    """The pre-pass whose keys never reach the driver: ScanKeys in Ray tasks, its blocks kept in the
    object store; the losers by keyed shuffles across workers (engine/dist_dedup: the same rows as
    find_losers) and the kept rows by an anti-join on the workers; the driver reads the per-block
    counts, the samples and the number of kept rows."""
    scanned = dist_prepass.scan_blocks(paths, [ReadFiles(), scan], cpu)
    tally = Tally(sample_rows)
    for block in dist_prepass.small_rows(scanned):
        tally.add(block)
    tally.check(paths)
    keys = dist_prepass.keys_dataset(scanned, from_ipc, scan.empty_keys())
    del scanned  # its blocks leave the object store: the keys are materialized
    losers = dist_prepass.find_losers(keys, dedup)
    kept = dist_prepass.kept_rows(keys, losers, keys.count())
    sample = tally.sample
    lost = dist_prepass.lost_among(losers, sample.column(S.POS).to_numpy()) if sample is not None else set()
    return Prepass(tally.n_read, tally.rejected(), losers, kept, merged_sample(sample, lost.__contains__),
                   dist_prepass.counts_by_reason(losers))


def find_losers(keys: pa.Table, dedup: list[Deduplicator]) -> pa.Table:
    """Each deduplicator in turn, on the rows the ones before it kept."""
    parts = []
    for d in dedup:
        lost = d.losers(keys)
        parts.append(lost)
        keys = without_rejected(keys, lost)
    return pa.concat_tables(parts) if parts else LOSERS.empty_table()


def sample_candidates(samples: list[pa.Table], k: int) -> pa.Table | None:
    """The `k` rows of smallest priority over all blocks, in that order."""
    if not k or not samples:
        return None
    return pa.concat_tables(samples).sort_by([("priority", "ascending"), (S.POS, "ascending")]).slice(0, k)


def merged_sample(candidates: pa.Table | None, lost) -> list[str]:
    """The kept captions (`lost(pos)` false) among the sample's candidates (Tally.sample), in their order."""
    if candidates is None:
        return []
    return [c for p, c in zip(candidates.column(S.POS).to_pylist(), candidates.column(S.CAPTION).to_pylist()) if not lost(p)]


def write_losers(losers: pa.Table, path: str) -> None:
    """The losers sorted by pos in small row groups, so that each batch of the stream reads only the
    row groups that cover its positions (see curate.dedup.MarkDuplicates)."""
    files.delete_dir(path)  # (a folder a distributed pre-pass wrote)
    files.write_parquet_atomic(path, losers.sort_by(S.POS), row_group_size=dist_prepass.LOSER_ROW_GROUP)
