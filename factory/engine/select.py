"""Selection's Ray part: copying the chosen rows of candidates/ into dataset/ parts, in parallel."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from factory import schema as S
from factory.candidates import with_generator
from factory.io import files
from factory.io.write import keys_digest
from factory.select import PickSelected

# Rows per dataset file: about this many bytes of candidates, however few rows each candidates file gives.
DATASET_PART_MB = 256


def write_selected(candidate_paths: list[str], chosen: pa.Table, staging_dir: str, cpu: float, local_max_mb: float = 0,
                   sizes: dict[str, int] | None = None, row_bytes: float | None = None, legacy: str | None = None) -> int:
    """Copy the chosen rows (`chosen[file]` indexes `candidate_paths`) with their rank into
    `staging_dir`, reading only the files that hold them; groups of files make one dataset file of
    about DATASET_PART_MB (at `row_bytes` a row; unknown: a whole file's bytes a row, so parts stay
    small). In Ray tasks, or in this process when those files hold at most `local_max_mb` (tasks
    would cost more). `sizes`: bytes per path where known (one listing instead of a request each);
    `legacy`: the generator of samples written before the generator column (see factory/candidates.py)."""
    files.makedirs(staging_dir)  # here on the driver; the tasks only write into it
    if chosen.num_rows == 0:
        return 0
    pick = PickSelected(chosen)
    file_ids, n_chosen = pick.files()
    if sizes is None:
        sizes = {candidate_paths[i]: files.size(candidate_paths[i]) for i in file_ids}
    if row_bytes is None:
        row_bytes = max((sizes.get(candidate_paths[i], 0) for i in file_ids), default=0)
    groups = part_groups(n_chosen, row_bytes, DATASET_PART_MB * 2**20)

    def write(batch: pa.Table) -> pa.Table:
        parts = []
        for i in batch.column("files").to_pylist()[0]:
            fs, path = files.resolve(candidate_paths[i])
            table = files.conform(pq.read_table(path, filesystem=fs, partitioning=None), S.CANDIDATES)
            parts.append(pick(i, with_generator(table, legacy)))
        out = pa.concat_tables(parts).cast(S.DATASET) if parts else S.DATASET.empty_table()
        if out.num_rows:
            name = f"part-{keys_digest(*(out.column(c).to_pylist() for c in (S.ID, S.SAMPLE, S.GENERATOR)))}.parquet"
            files.write_parquet_atomic(files.join(staging_dir, name), out, make_parent=False)
        return pa.table({"rows": [out.num_rows]})

    items = [{"files": [int(file_ids[i]) for i in g]} for g in groups]
    if sum(sizes.get(candidate_paths[i], 0) for i in file_ids) <= local_max_mb * 2**20:
        return sum(write(pa.Table.from_pylist([item])).column("rows")[0].as_py() for item in items)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(write, batch_size=1, batch_format="pyarrow", num_cpus=cpu)
    return sum(int(b["rows"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


def part_groups(chosen_rows, row_bytes: float, part_bytes: float) -> list[list[int]]:
    """Consecutive runs of files (positions in `chosen_rows`, each file's number of chosen rows)
    whose chosen rows, at `row_bytes` each, come to about `part_bytes`; at least one file a run."""
    groups, current, acc = [], [], 0.0
    for pos, n in enumerate(chosen_rows):
        current.append(pos)
        acc += float(n) * row_bytes
        if acc >= part_bytes:
            groups.append(current)
            current, acc = [], 0.0
    if current:
        groups.append(current)
    return groups
