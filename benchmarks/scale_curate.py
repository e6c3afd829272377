"""The curation pre-pass at scale, through Ray (CPU): what a run does before it generates anything.

`--captions N` captions with planted exact copies (recased, re-spaced), near duplicates and
repeated ids are written by Ray tasks into `--files` JSONL files (the driver never holds them); then
factory.prepass.run_prepass runs on them with ray.local_scan_mb=0, i.e. the distributed path: the
scan in Ray tasks, the keys in the object store, the exact and near duplicate losers by keyed
shuffles (factory/engine/dist_dedup.py), the losers written by the workers. `--check` (small
pools) also runs the driver path and compares the losers and the kept rows.

The last two lines: a header, then captions/s of the pre-pass and the driver's peak RSS in MiB.

    python benchmarks/scale_curate.py --captions 100000
    python benchmarks/scale_curate.py --captions 1000000 --files 10
    python benchmarks/scale_curate.py --captions 20000 --check
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

from benchmarks.common import local_ray  # noqa: E402

from factory import schema as S  # noqa: E402
from factory.config import compose  # noqa: E402
from factory.job import load_job  # noqa: E402
from factory.prepass import run_prepass  # noqa: E402
from tests.fixtures.planted import planted_pool  # noqa: E402

NEAR = ["curate.near_dup.enabled=true"]


def write_file(batch: pa.Table, rows: int, directory: str) -> pa.Table:
    """Captions [f * rows, (f + 1) * rows) into captions-f.jsonl: planted duplicates, every 997th id repeated."""
    f = batch.column("id")[0].as_py()
    captions, _ = planted_pool(rows, near_fraction=0.08, exact_fraction=0.03, seed=f)
    start = f * rows
    path = Path(directory) / f"captions-{f:05d}.jsonl"
    with path.open("w") as out:
        for i, c in enumerate(captions):
            pos = start + i
            out.write(json.dumps({"id": str(pos if pos % 997 else pos - 1), "caption": c}) + "\n")
    return pa.table({"bytes": [path.stat().st_size]})


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rows(t: pa.Table, cols) -> list[tuple]:
    return sorted(zip(*(t.column(c).to_pylist() for c in cols)))


def main(argv=None) -> tuple[float, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=100_000)
    p.add_argument("--files", type=int, default=None, help="input files (default: one per 20,000 captions)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--no-near", action="store_true", help="exact duplicates only")
    p.add_argument("--check", action="store_true", help="also run the driver path and compare (small pools)")
    p.add_argument("--dir", default=None, help="where the input files go (default: a temporary folder)")
    args = p.parse_args(argv)
    n_files = args.files or max(1, args.captions // 20_000)
    per_file = -(-args.captions // n_files)
    local_ray(args.cpus)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        written = ray.data.range(n_files, override_num_blocks=n_files).map_batches(
            write_file, fn_kwargs={"rows": per_file, "directory": tmp}, batch_size=1, batch_format="pyarrow").materialize()
        size = sum(int(t.column("bytes").to_numpy().sum()) for t in ray.get(written.to_arrow_refs()))
        paths = sorted(str(f) for f in Path(tmp).glob("*.jsonl"))
        print(f"{n_files * per_file:,} captions in {n_files} files ({size / 2**20:.0f} MiB) written by Ray tasks in "
              f"{time.perf_counter() - t0:.1f} s; driver peak RSS so far {peak_rss_mib():.0f} MiB", flush=True)
        pipeline = load_job(compose([] if args.no_near else NEAR)).pipeline
        t0 = time.perf_counter()
        pre = run_prepass(paths, pipeline, 1.0, 0)
        pre.save_losers(str(Path(tmp) / ".duplicates"))
        seconds = time.perf_counter() - t0
        rss = peak_rss_mib()
        print(f"distributed pre-pass: {pre.n_read:,} read, {pre.n_duplicates():,} duplicates {pre.duplicates_by_reason()}, "
              f"{pre.kept.num_rows:,} kept, in {seconds:.1f} s; driver peak RSS {rss:.0f} MiB", flush=True)
        if args.check:
            t0 = time.perf_counter()
            local = run_prepass(paths, pipeline, 1.0, float("inf"))
            same = (rows(local.losers, [S.POS, S.REASON, S.DETAIL]) == rows(pre.losers_table(), [S.POS, S.REASON, S.DETAIL])
                    and rows(local.kept, [S.ID, S.NORM_HASH]) == rows(pre.kept, [S.ID, S.NORM_HASH]))
            print(f"driver path: {local.n_duplicates():,} duplicates in {time.perf_counter() - t0:.1f} s; equal: {same}", flush=True)
            if not same:
                raise SystemExit("the distributed pre-pass differs from the driver's")
    rate = pre.n_read / seconds
    print("captions/s driver_peak_rss_mib")
    print(f"{rate:.0f} {rss:.0f}")
    return rate, rss


if __name__ == "__main__":
    main()
