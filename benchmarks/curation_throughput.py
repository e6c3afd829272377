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

from factory import schema as S  # noqa: E402
from factory.config import compose  # noqa: E402
from factory.curate import near_dup as nd  # noqa: E402
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


def per_batch(captions: list[str], rules_cfg: dict, near_cfg: dict) -> None:
    from factory.curate.rules import CaptionRules

    n = len(captions)
    rules = CaptionRules(**rules_cfg)
    batches = [pa.table({S.CAPTION: captions[i : i + 1024], S.REASON: pa.array([None] * len(captions[i : i + 1024]), pa.string()),
                         S.DETAIL: pa.array([None] * len(captions[i : i + 1024]), pa.string())}) for i in range(0, n, 1024)]
    t = time.perf_counter()
    kept = sum(rules(b).column(S.REASON).null_count for b in batches)
    rules_s = time.perf_counter() - t
    print(f"stage rules (1 core):            {rate(n, rules_s)}; {n - kept:,} rejected")
    t = time.perf_counter()
    sigs = [nd.signature_column(captions[i : i + 1024], near_cfg["num_perm"], near_cfg["shingle_size"]) for i in range(0, n, 1024)]
    sig_s = time.perf_counter() - t
    print(f"stage minhash signatures (1 core): {rate(n, sig_s)}")
    keys = pa.table({S.ID: [str(i) for i in range(n)], S.POS: pa.array(range(n), pa.int64()), S.MINHASH: pa.chunked_array(sigs)})
    t = time.perf_counter()
    near = nd.find_near_duplicates(keys, near_cfg["threshold"], near_cfg["bands"], near_cfg["max_bucket_span"])
    lsh_s = time.perf_counter() - t
    print(f"stage LSH grouping (driver):     {rate(n, lsh_s)}; {near.num_rows:,} near duplicates (exact copies included)")
    print(f"stages rules + near-dup (1 core): {rate(n, rules_s + sig_s + lsh_s)}")


def through_ray(captions: list[str], n_files: int, cpus: int, cfg: dict) -> float:
    import ray

    from factory import pipeline
    from factory.curate.dedup import MarkRejected, find_duplicates
    from factory.curate.rules import CaptionRules
    from factory.io.write import RejectsSplit

    n = len(captions)
    tmp = Path(tempfile.mkdtemp(prefix="curation-bench-"))
    per = -(-n // n_files)
    paths = []
    for f in range(n_files):
        p = tmp / f"captions-{f:02d}.jsonl"
        p.write_text("".join(json.dumps({"id": f * per + i + 1, "caption": c}) + "\n" for i, c in enumerate(captions[f * per : (f + 1) * per])))
        paths.append(str(p))
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    pipeline.configure_data_context({"progress_bars": False})
    cpu = cfg["resources"]["cpu_task_cpus"]
    near_cfg = cfg["curate"]["near_dup"] | {"enabled": True}

    t = time.perf_counter()
    keys, n_read = pipeline.scan_keys(paths, cpu, minhash=(near_cfg["num_perm"], near_cfg["shingle_size"]), rules=cfg["curate"]["rules"])
    scan_only_s = time.perf_counter() - t
    assert n_read == n
    print(f"ray pre-pass (read; rules, dedup keys and minhash signatures in the same tasks): {rate(n, scan_only_s)}")
    t = time.perf_counter()
    rejected = find_duplicates(keys)
    near = nd.find_near_duplicates(nd.without_rejected(keys, rejected), near_cfg["threshold"], near_cfg["bands"], near_cfg["max_bucket_span"])
    rejected = pa.concat_tables([rejected, near])
    lsh_s = time.perf_counter() - t
    print(f"exact dedup + near-dup LSH + groups (driver): {rate(n, lsh_s)}; {near.num_rows:,} near duplicates")
    print(f"pre-pass with near-dup: {rate(n, scan_only_s + lsh_s)}")
    scan_s = scan_only_s + lsh_s

    t = time.perf_counter()
    rules = {k: v for k, v in cfg["curate"]["rules"].items() if k != "perplexity"}
    ds = pipeline.caption_rows(paths, cpu)
    ds = ds.map_batches(CaptionRules(**rules), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(MarkRejected(rejected), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(RejectsSplit(str(tmp / "rejects")), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
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
    cfg = compose()
    t = time.perf_counter()
    captions = caption_pool(args.captions)
    print(f"generated {len(captions):,} captions in {time.perf_counter() - t:.1f} s")
    rules_cfg = {k: v for k, v in cfg["curate"]["rules"].items() if k != "perplexity"}
    per_batch(captions, rules_cfg, cfg["curate"]["near_dup"])
    total_s = through_ray(captions, args.files, args.cpus, cfg)
    print(f"total (rules + near-dup through Ray, {args.cpus} CPUs): {rate(len(captions), total_s)}")


if __name__ == "__main__":
    main()
