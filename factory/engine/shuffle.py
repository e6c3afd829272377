"""Keyed shuffles over Ray Data: the one primitive the distributed dedup and selection build on.

`per_key(ds, keys, fn, n)` hash-partitions `ds` by `keys` into `n` partitions and calls
`fn(partition)` once per partition, on some worker, with every row that shares a key value in that
one call. It is Ray Data's keyed `repartition` (a task-based map/reduce shuffle under the default
SHUFFLE_V2 strategy: lost tasks are retried and lost shards rebuilt from lineage) followed by
`map_batches(batch_size=None)`, which hands each reduced partition over whole: the same guarantee
Ray's own `groupby().map_groups()` relies on. A join is a `per_key` over the union of two datasets
brought to one schema. Only object references and block metadata reach the driver.
"""
from __future__ import annotations

import math
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import DataContext, Dataset
from ray.data.context import ShuffleStrategy
from ray.data.dataset import MaterializedDataset

# Strategies under which a keyed repartition emits each partition as one block.
KEYED_STRATEGIES = (ShuffleStrategy.SHUFFLE_V2, ShuffleStrategy.HASH_SHUFFLE)
ROWS_PER_PARTITION = 500_000  # ~300 MB of dedup keys with signatures: a reduce task stays well under 1 GB
# Ray Data runs shuffle map and reduce tasks in worker pools of their own (runtime_env markers), so a
# small node (soft limit: one idle worker per CPU) kills and restarts workers at every switch: a
# 3,000-row shuffle took 15-20 s on 2 CPUs, 0.15 s with these markers in the job's runtime_env,
# which puts every task in one pool. Merge them into ray.init(runtime_env={"env_vars": ...}).
ONE_WORKER_POOL = {"RAY_DATA_SHUFFLE_MAP_WORKER": "1", "RAY_DATA_SHUFFLE_REDUCE_WORKER": "1"}


def check_strategy(ds: Dataset) -> None:
    strategy = (ds.context or DataContext.get_current()).shuffle_strategy
    if strategy not in KEYED_STRATEGIES:
        raise ValueError(f"ray.data shuffle_strategy={strategy.value}: distributed dedup and selection need a hash "
                         f"shuffle ({', '.join(s.value for s in KEYED_STRATEGIES)})")


def per_key(ds: Dataset, keys: list[str], fn: Callable[[pa.Table], pa.Table], partitions: int) -> Dataset:
    """`fn` applied to each of `partitions` hash partitions of `ds` by `keys` (lazy)."""
    check_strategy(ds)
    return ds.repartition(partitions, keys=keys).map_batches(fn, batch_size=None, batch_format="pyarrow", zero_copy_batch=True)


def per_block(ds: Dataset, fn: Callable[[pa.Table], pa.Table]) -> Dataset:
    """`fn` applied to each block of `ds`, whatever its size (lazy)."""
    return ds.map_batches(fn, batch_size=None, batch_format="pyarrow", zero_copy_batch=True)


def materialized(ds: Dataset) -> MaterializedDataset:
    return ds if isinstance(ds, MaterializedDataset) else ds.materialize()


def uncompressed(ds: MaterializedDataset) -> MaterializedDataset:
    """The blocks of `ds` as a dataset of its own DataContext (a copy of ds's) whose shuffles do not
    compress their shards: every dataset derived from it inherits that, the caller's context is left
    alone. For hashes, positions and signatures zstd saves nothing and costs ~9 s of CPU a GB
    (encode + decode, measured on this 2-core machine)."""
    ctx = ds.context.copy()
    ctx.shuffle_compression = "none"
    with DataContext.current(ctx):  # the new dataset takes a copy of the current context
        return ray.data.from_arrow_refs(ds.to_arrow_refs())


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def partitions_for(rows: int, rows_per_partition: int = ROWS_PER_PARTITION) -> int:
    """Partitions for a shuffle of `rows` rows: at least one per CPU, at most `rows_per_partition` rows each."""
    return max(cluster_cpus(), math.ceil(rows / rows_per_partition))


def default_partitions(ds: Dataset, rows_per_partition: int = ROWS_PER_PARTITION) -> int:
    """Partitions for a shuffle of `ds`: by its row count when it is materialized (metadata), else two per CPU."""
    if isinstance(ds, MaterializedDataset):
        return partitions_for(ds.count(), rows_per_partition)
    return 2 * cluster_cpus()


@ray.remote
def _column_sum(block: pa.Table, column: str) -> int:
    return int(pc.sum(block.column(column)).as_py() or 0) if block.num_rows else 0


def column_sum(ds: MaterializedDataset, column: str) -> int:
    """Sum of an integer column of a materialized dataset: one small task per block, ints back."""
    return sum(ray.get([_column_sum.remote(ref, column) for ref in ds.to_arrow_refs()]))
