"""Exact top-K selection at scale through factory.select, on synthetic score rows (CPU).

N rows = N/samples string ids × `samples` samples each, in shuffled order, with scores rounded to
1e-4 so ties happen (within an id and across ids). Only the score columns exist: image bytes never
enter selection. Prints seconds and peak memory; the last line is the selection's seconds.

    python benchmarks/topk_scale.py --rows 10000000          # goal: < 60 s, < 2 GB on 2 cores
    python benchmarks/topk_scale.py --rows 100000 --k 10000  # seconds
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--k", type=int, default=None, help="default: rows / 10")
    args = p.parse_args(argv)
    k = args.k if args.k is not None else args.rows // 10
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
