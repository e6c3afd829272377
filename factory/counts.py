"""What an output holds, counted from its files: rejects by reason, candidates by their best
outcome, the samples already done (what a resumed run skips), and captions that changed since."""
from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.candidates import read_candidates, with_generator
from factory.curate.dedup import text_hash
from factory.io import files
from factory.select import is_current


def curation_rejected_ids(rejects_dir: str, reasons: tuple[str, ...]) -> pa.Array:
    """Ids a filter after deduplication rejected in this run, for one of `reasons` (they passed the
    pre-pass, so each id stands for one caption, unlike the ids of duplicate rows)."""
    if not reasons:
        return pa.array([], pa.string())
    t = files.read_parquet_dir(rejects_dir, [S.ID], filter=pc.field(S.REASON).isin(list(reasons)))
    return pa.array([], pa.string()) if t is None else t.column(S.ID).combine_chunks()


def count_rejects(rejects_dir: str) -> tuple[int, dict]:
    """Rows in rejects/ and their count per reason, most first (read a batch at a time)."""
    by_reason = files.count_values(files.list_files(rejects_dir, ".parquet"), S.REASON)
    return sum(by_reason.values()), dict(by_reason.most_common())


def settled(reasons: pa.ChunkedArray | pa.Array):
    """Per row: whether the sample is done for good (usable, or unusable for a reason that stays)."""
    return pc.invert(pc.fill_null(pc.is_in(reasons, value_set=pa.array(S.RETRY_ON_RESUME)), False))


CANDIDATE_COLUMNS = [S.ID, S.SAMPLE, S.GENERATOR, S.REASON]  # what counting the candidates reads


def count_candidates(candidates_dir: str, legacy: str | None = None) -> dict:
    """Samples in candidates/, each counted once by its best outcome (see tally_candidates), on the
    driver; engine/dist_counts counts the same on the workers."""
    paths = files.list_files(candidates_dir, ".parquet")
    return candidate_summary([tally_candidates(read_candidates(paths, CANDIDATE_COLUMNS, legacy))] if paths else [])


def tally_candidates(t: pa.Table) -> dict[str, collections.Counter]:
    """Samples of the rows `t` (CANDIDATE_COLUMNS), each counted once by its best outcome: usable,
    else unusable for a reason that stays, else one a resumed run tries again (S.RETRY_ON_RESUME). A
    sample can sit there twice: made again after running out of memory, or by two runs at once
    (resume.take_over). Tallies of tables that share no sample add up (candidate_summary)."""
    rank = pc.if_else(pc.is_null(t.column(S.REASON)), 0, pc.if_else(settled(t.column(S.REASON)), 1, 2))
    t = t.append_column("_rank", rank).sort_by("_rank")
    # "first" skips nulls: a sample's reason is that of its best unusable row, read only where it has no usable one.
    best = t.group_by([S.ID, S.SAMPLE, S.GENERATOR], use_threads=False).aggregate([("_rank", "min"), (S.REASON, "first")])
    bad = best.filter(pc.greater(best.column("_rank_min"), 0))
    return {"unusable": collections.Counter(bad.column(f"{S.REASON}_first").to_pylist()),
            "made": collections.Counter(str(g) for g in best.column(S.GENERATOR).to_pylist()),
            "usable": collections.Counter(str(g) for g in best.filter(pc.equal(best.column("_rank_min"), 0)).column(S.GENERATOR).to_pylist())}


def candidate_summary(tallies: list[dict]) -> dict:
    """The manifest's candidate counts from tallies of tables that share no sample: samples (rows),
    usable, unusable by reason (most first), and samples made and usable by generator."""
    total = {k: sum((collections.Counter(t[k]) for t in tallies), collections.Counter()) for k in ("unusable", "made", "usable")}
    by_generator = {g: {"samples": n, "usable": total["usable"].get(g, 0)} for g, n in sorted(total["made"].items())}
    return {"rows": total["made"].total(), "usable": total["usable"].total(), "unusable": dict(total["unusable"].most_common()),
            "by_generator": by_generator}


def candidate_keys(paths: list[str], legacy: str | None = None) -> tuple[pa.Table, pa.Table]:
    """(id, sample, generator) of every candidate in the files `paths` that is done for good (a
    resumed run makes the rest again: S.RETRY_ON_RESUME), and (id, norm_hash) of the caption each
    id's samples were made from, read a batch at a time (captions of millions of rows never sit in memory)."""
    keys, made = [], {}
    if paths:
        columns = [S.ID, S.SAMPLE, S.GENERATOR, S.CAPTION, S.REASON]
        for batch in files.parquet_dataset(paths, schema=S.CANDIDATES).to_batches(columns=columns):
            done = settled(batch.column(S.REASON))
            part = pa.table({c: batch.column(c) for c in (S.ID, S.SAMPLE, S.GENERATOR)})
            keys.append(with_generator(part, legacy).filter(done))
            for i, caption in zip(batch.column(S.ID).to_pylist(), batch.column(S.CAPTION).to_pylist()):
                if i not in made:
                    made[i] = text_hash(caption)
    empty = pa.table({S.ID: pa.array([], pa.string()), S.SAMPLE: pa.array([], pa.int32()), S.GENERATOR: pa.array([], pa.string())})
    made_from = pa.table({S.ID: pa.array(list(made), pa.string()), S.NORM_HASH: pa.array(list(made.values()), pa.int64())})
    return (pa.concat_tables(keys) if keys else empty), made_from


def changed_captions(kept: pa.Table, made_from: pa.Table) -> pa.Table:
    """Ids whose caption in the input now differs (beyond case, Unicode form and white space)
    from the caption their samples on disk were made from: (id, norm_hash, norm_hash_on_disk)."""
    both = kept.join(made_from, S.ID, join_type="inner", right_suffix="_on_disk", use_threads=False)
    return both.filter(pc.not_equal(both.column(S.NORM_HASH), both.column(S.NORM_HASH + "_on_disk")))


def count_current(keys: np.ndarray, on_disk: pa.Table, ids: pa.Array, repeat: int, generators: list[str]) -> int:
    """Samples on disk (`keys` per row of `on_disk`) that count toward a run of captions `ids`
    at `repeat` with `generators`: what the manifest calls `resumed`."""
    return len(np.unique(keys[is_current(on_disk, ids, repeat, generators).to_numpy(zero_copy_only=False)]))
