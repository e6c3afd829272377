"""counts.count_candidates on the workers, for runs whose selection is distributed: the candidates'
(id, sample, generator, reason) rows are read by one task a file and shuffled by caption id, so
every row of a sample meets the others in one partition, which tallies them (counts.tally_candidates);
the driver receives one small tally a partition and adds them up (counts.candidate_summary)."""
from __future__ import annotations

import json

import pyarrow as pa
import ray

from factory import schema as S
from factory.candidates import read_candidates
from factory.counts import CANDIDATE_COLUMNS, candidate_summary, tally_candidates
from factory.engine.shuffle import default_partitions, per_key

TALLY = "tally"  # one JSON text a partition


@ray.remote
def _rows(path: str, legacy: str | None) -> pa.Table:
    return read_candidates([path], CANDIDATE_COLUMNS, legacy)


def _tally(part: pa.Table) -> pa.Table:
    tally = tally_candidates(part.select(CANDIDATE_COLUMNS)) if part.num_rows else {}
    return pa.table({TALLY: [json.dumps(tally)]})


def count_candidates(paths: list[str], legacy: str | None, cpu: float) -> dict:
    """The same dict as counts.count_candidates over the candidates files `paths`."""
    if not paths:
        return candidate_summary([])
    read = _rows.options(num_cpus=cpu)
    rows = ray.data.from_arrow_refs([read.remote(p, legacy) for p in paths])
    tallies = per_key(rows, [S.ID], _tally, default_partitions(rows))
    parts = [json.loads(x) for batch in tallies.iter_batches(batch_size=None, batch_format="pyarrow") for x in batch.column(TALLY).to_pylist()]
    return candidate_summary([t for t in parts if t])
