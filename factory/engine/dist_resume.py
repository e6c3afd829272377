"""The resume bookkeeping of a run whose pre-pass was distributed (inputs above ray.local_scan_mb),
as keyed joins by caption id on the workers: the kept rows (one per caption that passed the
pre-pass) stay in the object store, and the driver receives one small row a partition.

- `check`: before generation, the captions whose text changed since their samples on disk were
  made (counts.changed_captions), the samples on disk that count toward this run
  (counts.count_current), and the sample keys already done (what generation skips: 8 bytes a sample
  made, the one thing here that grows, with the samples made rather than the captions read).
- `curated`: after generation, the ids of this run's curated captions (kept, minus the ids a late
  filter rejected for one of the curation reasons), written to `curated_ids` by the workers.
- `current`: counts.count_current of those ids.

Each gives what the driver path in generate.py and finish.py gives (tests/test_dist_run.py).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Dataset
from ray.data.dataset import MaterializedDataset

from factory import schema as S
from factory.candidates import read_candidates
from factory.counts import settled
from factory.curate.dedup import text_hash
from factory.engine.shuffle import materialized, partitions_for, per_block, per_key
from factory.expand import sample_keys
from factory.io import files
from factory.select import is_current

SIDE = "side"  # which table a row of a join comes from
KEPT, CANDIDATE, REJECTED = 0, 1, 2
# One schema for every side of the joins (columns a side lacks are null), then the side.
ROWS = pa.schema([pa.field(S.ID, pa.string()), pa.field(S.NORM_HASH, pa.int64()), pa.field(S.SAMPLE, pa.int32()),
                  pa.field(S.GENERATOR, pa.string()), pa.field(S.FILE, pa.int32()), pa.field(S.ROW, pa.int64())])
IDS = pa.schema([pa.field(S.ID, pa.string())])


def _side(table: pa.Table, side: int) -> pa.Table:
    """`table` in ROWS (columns it lacks: null), tagged with `side`."""
    return files.conform(table, ROWS).append_column(SIDE, pa.array(np.full(table.num_rows, side, np.int8)))


@ray.remote(num_returns=2)
def _candidate_rows(path: str, index: int, legacy: str | None) -> tuple[pa.Table, np.ndarray]:
    """One candidates file: the join rows of its samples done for good (id, the hash of the caption
    they were made from, sample, generator, file, row), and their sample keys."""
    t = read_candidates([path], [S.ID, S.SAMPLE, S.GENERATOR, S.CAPTION, S.REASON], legacy)
    t = t.append_column(S.FILE, pa.array(np.full(t.num_rows, index, np.int32))).append_column(S.ROW, pa.array(np.arange(t.num_rows)))
    hashes = pa.array([text_hash(c) for c in t.column(S.CAPTION).to_pylist()], pa.int64())
    t = t.append_column(S.NORM_HASH, hashes).filter(settled(t.column(S.REASON)))
    return _side(t, CANDIDATE), sample_keys(t)


def candidates(candidate_paths: list[str], legacy: str | None, cpu: float) -> tuple[Dataset, np.ndarray]:
    """The join rows of the candidates files (in the object store) and their sample keys, sorted and unique."""
    read = _candidate_rows.options(num_cpus=cpu)
    refs = [read.remote(p, i, legacy) for i, p in enumerate(candidate_paths)]
    keys = ray.get([k for _, k in refs])
    done = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
    return ray.data.from_arrow_refs([t for t, _ in refs]), done


def _ids_of(part: pa.Table) -> pa.Array:
    """The ids of a partition's kept rows that no rejected row names."""
    side = part.column(SIDE)
    kept = part.filter(pc.equal(side, KEPT)).column(S.ID)
    rejected = part.filter(pc.equal(side, REJECTED)).column(S.ID).combine_chunks()
    return pc.filter(kept, pc.invert(pc.is_in(kept, value_set=rejected))).combine_chunks()


def _checked(part: pa.Table, repeat: int, generators: tuple[str, ...]) -> pa.Table:
    """One row: how many kept ids' captions differ from the caption their first sample on disk (in
    (file, row) order) was made from, the first such id, and how many samples on disk count."""
    ids = _ids_of(part)
    side = part.column(SIDE)
    cands = part.filter(pc.equal(side, CANDIDATE)).sort_by([(S.FILE, "ascending"), (S.ROW, "ascending")])
    made = cands.group_by(S.ID, use_threads=False).aggregate([(S.NORM_HASH, "first")])
    kept = part.filter(pc.equal(side, KEPT)).select([S.ID, S.NORM_HASH])
    both = kept.join(made, S.ID, join_type="inner", use_threads=False)
    changed = both.filter(pc.not_equal(both.column(S.NORM_HASH), both.column(f"{S.NORM_HASH}_first")))
    current = cands.filter(is_current(cands, ids, repeat, list(generators)))
    n_current = current.group_by([S.ID, S.SAMPLE, S.GENERATOR], use_threads=False).aggregate([]).num_rows
    first = changed.column(S.ID)[0].as_py() if changed.num_rows else None
    return pa.table({"changed": [changed.num_rows], "changed_id": pa.array([first], pa.string()), "current": [n_current]})


@dataclass
class Checked:
    changed: int  # captions that differ from those their samples on disk were made from
    changed_id: str | None  # one of them
    current: int  # samples on disk that count toward this run
    done: np.ndarray  # sample keys already made (sorted)


def joined(parts: list[Dataset], rows: int, fn) -> list[dict]:
    """`fn` of each id partition of the union of `parts` (_side rows), its rows back on the driver."""
    both = functools.reduce(lambda a, b: a.union(b), parts)
    out = materialized(per_key(both, [S.ID], fn, partitions_for(rows)))
    return [r for t in ray.get(out.to_arrow_refs()) for r in t.to_pylist()]


def tally(rows: list[dict], done: np.ndarray) -> Checked:
    first = next((r["changed_id"] for r in rows if r["changed_id"] is not None), None)
    return Checked(sum(r["changed"] for r in rows), first, sum(r["current"] for r in rows), done)


def check(kept: MaterializedDataset, candidate_paths: list[str], legacy: str | None, repeat: int, generators: list[str],
          cpu: float) -> Checked:
    """The resume checks of the kept (id, norm_hash) rows against the candidates files."""
    if not candidate_paths:
        return Checked(0, None, 0, np.empty(0, np.int64))
    cands, done = candidates(candidate_paths, legacy, cpu)
    fn = functools.partial(_checked, repeat=repeat, generators=tuple(generators))
    return tally(joined([per_block(kept, functools.partial(_side, side=KEPT)), cands], kept.count() + len(done), fn), done)


def current(curated_ids: MaterializedDataset, candidate_paths: list[str], legacy: str | None, repeat: int,
            generators: list[str], cpu: float) -> int:
    """counts.count_current of the ids `curated_ids` (one column, id) and the candidates files."""
    return check(curated_ids, candidate_paths, legacy, repeat, generators, cpu).current


@ray.remote
def _rejected_rows(path: str, reasons: tuple[str, ...]) -> pa.Table:
    """The join rows of the ids one rejects file holds for one of `reasons`."""
    return _side(files.read_parquet_files([path], [S.ID], filter=pc.field(S.REASON).isin(list(reasons))), REJECTED)


def _curated(part: pa.Table) -> pa.Table:
    return pa.Table.from_arrays([_ids_of(part)], schema=IDS)


def _write_ids(block: pa.Table, directory: str) -> pa.Table:
    if block.num_rows:
        # named by its smallest id: partitions hold disjoint ids
        first = hashlib.blake2b(pc.min(block.column(S.ID)).as_py().encode(), digest_size=8).hexdigest()
        name = f"part-{first}.parquet"
        files.write_parquet_atomic(files.join(directory, name), block.cast(IDS), make_parent=False)
    return pa.table({"rows": [block.num_rows]})


def curated(kept: MaterializedDataset, rejects_dir: str, reasons: tuple[str, ...], path: str) -> MaterializedDataset:
    """The ids of this run's curated captions (kept, not rejected by a late filter for one of
    `reasons`), in the object store, and written by the workers as a folder of Parquet at `path`."""
    parts = [per_block(kept, functools.partial(_side, side=KEPT))]
    rejects = files.list_files(rejects_dir, ".parquet") if reasons else []
    if rejects:
        parts.append(ray.data.from_arrow_refs([_rejected_rows.remote(p, reasons) for p in rejects]))
    both = functools.reduce(lambda a, b: a.union(b), parts)
    ids = materialized(per_key(both, [S.ID], _curated, partitions_for(kept.count())))
    files.delete_file(path)
    files.delete_dir(path)
    files.makedirs(path)
    if not ids.count():  # readers need the schema: one empty file
        files.write_parquet_atomic(files.join(path, "part-empty.parquet"), IDS.empty_table(), make_parent=False)
    per_block(ids, functools.partial(_write_ids, directory=path)).materialize()
    return ids
