"""Exact top-K selection at scale through factory.select, on synthetic score rows (CPU).

N rows = N/samples string ids × `samples` samples each, in shuffled order, with scores rounded to
1e-4 so ties happen (within an id and across ids). Only the score columns exist: image bytes never
enter selection. Prints seconds and peak memory; the last line is the selection's seconds.

    python benchmarks/topk_scale.py --rows 10000000          # goal: < 60 s, < 2 GB on 2 cores
    python benchmarks/topk_scale.py --rows 100000 --k 10000  # seconds

`--distributed` runs factory.select_dist instead, on rows made on the Ray workers (a block at a
time, in `--files` files of (file, row) order) and materialized in the object store: the driver
never holds them. It prints the driver's peak RSS and rows/s; the last line is rows per second.

    python benchmarks/topk_scale.py --distributed --rows 30000000 --k 1000000  # goal: driver < 1 GB
    python benchmarks/topk_scale.py --distributed --rows 200000 --check        # equal to select_top_k
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory import schema as S  # noqa: E402
from factory.select import select_top_k  # noqa: E402

BLOCK_ROWS = 500_000
FILE_ROWS = 10_000  # score rows per candidates file, for the (file, row) order of the distributed rows
_MULT = 2_654_435_761  # odd, prime: r -> (r * _MULT + 12345) mod N is a permutation when gcd(_MULT, N) == 1


def synthetic_scores(rows: int, samples: int = 2, seed: int = 0) -> pa.Table:
    """id, sample, score, clip_score, ssim: `rows` rows, `samples` per id, shuffled, with ties."""
    rng = np.random.default_rng(seed)
    n_ids = rows // samples
    names = pc.binary_join_element_wise("cap-", pc.cast(pa.array(np.arange(n_ids)), pa.string()), "")
    perm = rng.permutation(n_ids * samples)
    code = perm // samples
    clip = np.round(rng.uniform(0.15, 0.40, len(perm)), 4)
    ssim = np.round(rng.uniform(0.50, 0.95, len(perm)), 4)
    return pa.table({
        S.ID: names.take(pa.array(code)),
        S.SAMPLE: pa.array((perm % samples).astype(np.int32)),
        S.SCORE: pa.array(np.round(clip + 0.5 * ssim, 4)),
        S.CLIP_SCORE: pa.array(clip),
        S.SSIM: pa.array(ssim),
    })


def shuffled_code(r: np.ndarray, n: int) -> np.ndarray:
    """A permutation of 0..n-1 computed a block at a time (n below 3.4e9, not a multiple of _MULT: no overflow)."""
    return (r * _MULT + 12345) % n


def score_block(batch: dict, rows: int, samples: int) -> pa.Table:
    """Rows [r0, r0 + len) of the distributed benchmark's table: id, sample, scores, file, row."""
    r = np.asarray(batch["id"], dtype=np.int64)
    p = shuffled_code(r, (rows // samples) * samples)
    rng = np.random.default_rng(int(r[0]))
    clip = np.round(rng.uniform(0.15, 0.40, len(r)), 4)
    ssim = np.round(rng.uniform(0.50, 0.95, len(r)), 4)
    ids = pc.binary_join_element_wise("cap-", pc.cast(pa.array(p // samples), pa.string()), "")
    gen = pa.DictionaryArray.from_arrays(pa.array((r % 3 == 0).astype(np.int8)), pa.array(["sd35", "flux"])).cast(pa.string())
    return pa.table({S.ID: ids, S.SAMPLE: pa.array((p % samples).astype(np.int32)), S.GENERATOR: gen, S.SCORE: pa.array(np.round(clip + 0.5 * ssim, 4)),
                     S.CLIP_SCORE: pa.array(clip), S.SSIM: pa.array(ssim), S.FILE: pa.array((r // FILE_ROWS).astype(np.int32)),
                     S.ROW: pa.array(r % FILE_ROWS)})


def distributed(args, k: int) -> float:
    import functools

    import ray

    from factory.engine.select_dist import select_top_k_distributed
    from benchmarks.common import local_ray  # here: the local path's driver figure stays without Ray

    rows = (args.rows // args.samples) * args.samples
    local_ray(args.cpus)
    t0 = time.perf_counter()
    scores = ray.data.range(rows, override_num_blocks=max(1, rows // BLOCK_ROWS)).map_batches(
        functools.partial(score_block, rows=rows, samples=args.samples), batch_size=None, batch_format="numpy").materialize()
    print(f"{rows:,} rows, {rows // args.samples:,} ids, {scores.size_bytes() / 2**20:.0f} MiB of score columns made on the "
          f"workers in {time.perf_counter() - t0:.1f} s; driver peak RSS so far {peak_rss_mb():.0f} MiB", flush=True)
    t0 = time.perf_counter()
    chosen, threshold, competing = select_top_k_distributed(scores, k=k, partitions=args.partitions)
    sel_s = time.perf_counter() - t0
    assert chosen.num_rows == min(k, competing), chosen.num_rows
    print(f"selected the top {chosen.num_rows:,} of {competing:,} ids (threshold {threshold}) in {sel_s:.1f} s, "
          f"{rows / sel_s:,.0f} rows/s; driver peak RSS {peak_rss_mb():.0f} MiB (whole driver process)", flush=True)
    if args.check:
        every = pa.concat_tables(ray.get(scores.to_arrow_refs())).sort_by([(S.FILE, "ascending"), (S.ROW, "ascending")])
        ref, ref_threshold, ref_competing = select_top_k(every.drop_columns([S.ROW]), k=k)
        same = chosen.equals(ref) and (threshold, competing) == (ref_threshold, ref_competing)
        print(f"equal to select_top_k on all rows: {same}", flush=True)
        if not same:
            raise SystemExit("the distributed selection differs from select_top_k")
    print("rows per second:")
    print(f"{rows / sel_s:.0f}")
    return rows / sel_s


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--k", type=int, default=None, help="default: rows / 10")
    p.add_argument("--distributed", action="store_true", help="factory.select_dist on rows made on Ray workers")
    p.add_argument("--cpus", type=int, default=2, help="--distributed: CPUs of the local Ray")
    p.add_argument("--partitions", type=int, default=None, help="--distributed: shuffle partitions (default: by rows)")
    p.add_argument("--check", action="store_true", help="--distributed: also compare with select_top_k on all rows (small runs)")
    args = p.parse_args(argv)
    k = args.k if args.k is not None else args.rows // 10
    if args.distributed:
        return distributed(args, k)
    t0 = time.perf_counter()
    table = synthetic_scores(args.rows, args.samples)
    gen_s = time.perf_counter() - t0
    rss_before = peak_rss_mb()
    print(f"{table.num_rows:,} rows, {table.num_rows // args.samples:,} ids, {table.nbytes / 2**20:.0f} MiB of score columns; "
          f"made in {gen_s:.1f} s; peak RSS so far {rss_before:.0f} MiB", flush=True)
    pool = pa.default_memory_pool()
    t0 = time.perf_counter()
    chosen, threshold, competing = select_top_k(table, k=k)
    sel_s = time.perf_counter() - t0
    assert chosen.num_rows == min(k, competing), chosen.num_rows
    print(f"selected the top {chosen.num_rows:,} of {competing:,} ids (threshold {threshold}) in {sel_s:.1f} s", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MiB (whole process, input included); pyarrow pool peak {pool.max_memory() / 2**20:.0f} MiB")
    print("selection seconds:")
    print(f"{sel_s:.2f}")
    return sel_s


if __name__ == "__main__":
    main()
