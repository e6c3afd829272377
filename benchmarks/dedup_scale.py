"""Distributed duplicate removal at scale (CPU): factory.engine.dist_dedup.duplicate_losers alone.

The keys (id, pos, norm_hash, 128-value MinHash signature) of a generated pool are made on the
workers, a block at a time (planted near duplicates and exact copies within each block, repeated
ids), and materialized in the object store: the driver never holds them. Then the distributed
search runs on them; its seconds, its captions/s and the driver's peak RSS are what this measures.
`--check` (small pools) also runs the driver implementation on all keys and compares the rejected
rows. The last line is captions per second of the distributed search.

    python benchmarks/dedup_scale.py --captions 200000
    python benchmarks/dedup_scale.py --captions 1000000 --cpus 2
    python benchmarks/dedup_scale.py --captions 20000 --check
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

from factory import schema as S  # noqa: E402
from factory.curate import near_dup as nd  # noqa: E402
from factory.curate.dedup import ExactDedup, dedup_keys  # noqa: E402
from factory.prepass import find_losers  # noqa: E402
from factory.engine.dist_dedup import duplicate_losers  # noqa: E402
from tests.fixtures.planted import planted_pool  # noqa: E402
from benchmarks.common import local_ray  # noqa: E402

NEAR = {"enabled": True, "threshold": 0.8, "bands": 16, "num_perm": 128, "shingle_size": 1, "max_bucket_span": 32}
BLOCK = 20_000


def pool_block(batch: dict) -> pa.Table:
    """The keys of captions [start, start + BLOCK): planted duplicates, and ids that repeat now and then."""
    start = int(batch["id"][0])
    n = len(batch["id"])
    captions, _ = planted_pool(n, near_fraction=0.08, exact_fraction=0.03, seed=start)
    pos = np.arange(start, start + n, dtype=np.int64)
    ids = [str(p if p % 997 else p - 1) for p in pos]  # every 997th row repeats the id before it
    base = pa.table({S.ID: ids, S.CAPTION: captions, S.POS: pos, S.REASON: pa.array([None] * n, pa.string())})
    return dedup_keys(base).append_column(S.MINHASH, nd.signature_column(captions, NEAR["num_perm"], NEAR["shingle_size"]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rejected_rows(t: pa.Table) -> list[tuple]:
    return sorted(zip(*(t.column(c).to_pylist() for c in (S.POS, S.REASON, S.DETAIL))))


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=200_000)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--no-near", action="store_true", help="exact duplicates only")
    p.add_argument("--check", action="store_true", help="also run the driver implementation and compare (small pools)")
    args = p.parse_args(argv)
    dedup = [ExactDedup(), nd.NearDedup(**dict(NEAR, enabled=not args.no_near))]
    local_ray(args.cpus)
    t0 = time.perf_counter()
    keys = ray.data.range(args.captions, override_num_blocks=max(1, args.captions // BLOCK)).map_batches(
        pool_block, batch_size=None, batch_format="numpy").materialize()
    print(f"{args.captions:,} captions' keys made on the workers in {time.perf_counter() - t0:.1f} s "
          f"({keys.size_bytes() / 2**20:.0f} MiB in the object store); driver peak RSS so far {peak_rss_mb():.0f} MiB", flush=True)
    t0 = time.perf_counter()
    losers = duplicate_losers(keys, dedup, partitions=args.partitions).materialize()
    seconds = time.perf_counter() - t0
    n_rejected = losers.count()
    print(f"distributed search: {n_rejected:,} rejected in {seconds:.1f} s; driver peak RSS {peak_rss_mb():.0f} MiB", flush=True)
    if args.check:
        every = pa.concat_tables(ray.get(keys.to_arrow_refs()))
        t0 = time.perf_counter()
        ref = find_losers(every, dedup)
        same = rejected_rows(pa.concat_tables(ray.get(losers.to_arrow_refs()))) == rejected_rows(ref)
        print(f"driver implementation: {ref.num_rows:,} rejected in {time.perf_counter() - t0:.1f} s; equal: {same}", flush=True)
        if not same:
            raise SystemExit("the distributed result differs from the driver's")
    print("captions/s of the distributed search:")
    print(f"{args.captions / seconds:.0f}")
    return args.captions / seconds


if __name__ == "__main__":
    main()
