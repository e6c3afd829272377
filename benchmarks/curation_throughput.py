"""Caption curation throughput: rules and near-duplicate removal on generated captions.

    python benchmarks/curation_throughput.py [--captions 200000] [--files 8] [--cpus 2]

Generates a caption pool (distinct captions, planted near duplicates and exact copies, and a share
of junk that the rules reject), then measures, in captions per second:
  1. per-batch stage cost on one core (the factory's own stage classes, batches of 1024):
     rules (CaptionRules), MinHash signatures, and the driver's LSH grouping;
  2. through Ray Data on `--cpus` cores, as `python -m factory` runs them: the pre-pass
     (read + dedup keys + signatures, then exact and near-duplicate decisions on the driver) and
     the streaming curation pass (read + rules + mark rejected + write rejects/);
and prints last the total: captions over the wall time of both Ray passes.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

from factory import schema as S  # noqa: E402
from factory.config import compose  # noqa: E402
from factory.engine import ray_setup, stream  # noqa: E402
from factory.engine.placement import Placement  # noqa: E402
from factory.job import load_job  # noqa: E402
from factory.prepass import run_prepass  # noqa: E402
from tests.fixtures.planted import planted_pool  # noqa: E402

JUNK = ["!!!", "$$$ BUY NOW $$$ !!! $$$", "img_2041.jpg", "click here click here click here click here click here click here "
        "click here click here click here click here click here click here", "ok", "😀😀😀😀😀😀😀😀😀😀", "1234567890 1234567890"]


def caption_pool(n: int, seed: int = 0) -> list[str]:
    captions, _ = planted_pool(n, near_fraction=0.08, exact_fraction=0.03, seed=seed)
    rng = random.Random(seed + 1)
    for i in rng.sample(range(n), n // 20):  # 5% junk for the rules to reject
        captions[i] = rng.choice(JUNK)
    return captions


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} captions/s ({seconds:.2f} s)"


def per_batch(captions: list[str], rules, near) -> None:
    """The rules and the near-duplicate search as stage objects, on one core."""
    n = len(captions)
    batches = [pa.table({S.CAPTION: captions[i : i + 1024], S.REASON: pa.array([None] * len(captions[i : i + 1024]), pa.string()),
                         S.DETAIL: pa.array([None] * len(captions[i : i + 1024]), pa.string())}) for i in range(0, n, 1024)]
    t = time.perf_counter()
    kept = sum(rules(b).column(S.REASON).null_count for b in batches)
    rules_s = time.perf_counter() - t
    print(f"stage rules (1 core):            {rate(n, rules_s)}; {n - kept:,} rejected")
    t = time.perf_counter()
    sigs = [near.key_columns(captions[i : i + 1024])[S.MINHASH] for i in range(0, n, 1024)]
    sig_s = time.perf_counter() - t
    print(f"stage minhash signatures (1 core): {rate(n, sig_s)}")
    keys = pa.table({S.ID: [str(i) for i in range(n)], S.POS: pa.array(range(n), pa.int64()), S.MINHASH: pa.chunked_array(sigs)})
    t = time.perf_counter()
    lost = near.losers(keys)
    lsh_s = time.perf_counter() - t
    print(f"stage LSH grouping (driver):     {rate(n, lsh_s)}; {lost.num_rows:,} near duplicates (exact copies included)")
    print(f"stages rules + near-dup (1 core): {rate(n, rules_s + sig_s + lsh_s)}")


def through_ray(captions: list[str], n_files: int, cpus: int, job) -> float:
    """The run's own pre-pass and curation stream (read, rules, duplicates marked, rejects/) through Ray."""
    n = len(captions)
    tmp = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    per = -(-n // n_files)
    paths = []
    for f in range(n_files):
        p = tmp / f"captions-{f:02d}.jsonl"
        p.write_text("".join(json.dumps({"id": f * per + i + 1, "caption": c}) + "\n" for i, c in enumerate(captions[f * per : (f + 1) * per])))
        paths.append(str(p))
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray_setup.configure_data_context(job.settings.ray)
    cpu = float(job.config["resources"]["cpu_task_cpus"])

    t = time.perf_counter()
    pre = run_prepass(paths, job.pipeline, cpu, local_max_mb=0)
    scan_s = time.perf_counter() - t
    assert pre.n_read == n
    print(f"ray pre-pass (read, rules, keys and signatures in tasks; exact + near-dup groups on the driver): {rate(n, scan_s)}; "
          f"{pre.duplicates_by_reason()}")

    t = time.perf_counter()
    dirs = {"rejects": str(tmp / "rejects"), "output": str(tmp)}
    pre.save_losers(str(tmp / ".duplicates.parquet"))
    ds = stream.curated_captions(paths, job.pipeline, str(tmp / ".duplicates.parquet"), dirs, {"tasks": Placement(cpus=cpu)})
    kept = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    stream_s = time.perf_counter() - t
    print(f"ray streaming pass (read, rules, mark, write rejects): {rate(n, stream_s)}; {kept:,} kept of {n:,}")
    ray.shutdown()
    return scan_s + stream_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    job = load_job(compose(["curate.near_dup.enabled=true", "ray.progress_bars=false"]))
    t = time.perf_counter()
    captions = caption_pool(args.captions)
    print(f"generated {len(captions):,} captions in {time.perf_counter() - t:.1f} s")
    (rules,), (_, near) = job.pipeline.early_filters(), job.pipeline.deduplicators()
    per_batch(captions, rules, near)
    total_s = through_ray(captions, args.files, args.cpus, job)
    print(f"total (rules + near-dup through Ray, {args.cpus} CPUs): {rate(len(captions), total_s)}")


if __name__ == "__main__":
    main()
