"""Ray pipeline vs a bare Python loop over the same tiny stages and captions.

    python benchmarks/pipeline_overhead.py [--captions 400] [--repeats 3]

Both include model loading, curation, synthesis, scoring, encoding, writing candidates and
selecting the top-k into dataset/; Ray's cluster start is outside the timing (on a cluster it is
already running), and so is the run report (the loop makes none). Prints both throughputs
(images/s) and, last, pipeline / loop (goal ≥ 0.85): with --repeats, the median of that many
alternated pairs, since one pair moves by ±8% between runs on a 2-core machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_captions  # noqa: E402
from factory import schema as S  # noqa: E402
from factory.config import compose  # noqa: E402
from factory.curate.dedup import MarkRejected, dedup_keys, find_duplicates  # noqa: E402
from factory.io import files  # noqa: E402
from factory.io.read import read_caption_file  # noqa: E402
from factory.io.write import CandidateWriter, RejectsSplit  # noqa: E402
from factory.job import load_job  # noqa: E402
from factory.run import run  # noqa: E402
from factory.score.tiny import ensure_tiny_clip  # noqa: E402
from factory.select import PickSelected, read_scores, select_top_k  # noqa: E402
from factory.synth.tiny import ensure_tiny_sdxl  # noqa: E402


def bare_loop(job, inp: str, out: str) -> int:
    """The same stage objects the run builds, called one after another in this process, all cores to torch."""
    torch.set_num_threads(os.cpu_count())
    p, s = job.pipeline, job.settings
    synth, scorer = p.generator.stage.loaded(), p.scorer.stage.loaded()
    rows = read_caption_file(inp, 0)
    for f in p.early_filters():
        rows = f(rows)
    rows = MarkRejected(find_duplicates(dedup_keys(rows)))(rows)
    kept = RejectsSplit(f"{out}/rejects")(rows)
    samples = p.expand.stage(kept)
    writer = CandidateWriter(f"{out}/candidates")
    n, bs, sbs = len(samples["id"]), s.synth.batch_size, s.score.batch_size
    pending = []
    for i in range(0, n, bs):
        pending.append(synth({k: v[i : i + bs] for k, v in samples.items()}))
        if sum(len(x["id"]) for x in pending) >= sbs or i + bs >= n:
            merged = {k: np.concatenate([x[k] for x in pending]) for k in pending[0]}
            writer(scorer(merged))
            pending = []
    paths = files.list_files(f"{out}/candidates", ".parquet")
    chosen, _, _ = select_top_k(read_scores(paths), s.select.k)
    pick = PickSelected(chosen)
    for i, path in enumerate(paths):
        rows = pick(i, pq.read_table(path))
        if rows.num_rows:
            files.write_parquet_atomic(f"{out}/dataset/{path.rsplit('/', 1)[-1]}", rows.cast(S.DATASET))
    return n


def timed_loop(args, inp: Path, out: Path) -> float:
    t = time.perf_counter()
    n = bare_loop(load_job(compose([f"select.k={args.captions // 10}"])), str(inp), str(out))
    rate = n / (time.perf_counter() - t)
    print(f"bare loop: {n} images in {n / rate:.1f} s = {rate:.3f} images/s", flush=True)
    return rate


def timed_pipeline(args, inp: Path, out: Path) -> float:
    job = load_job(compose([f"input={inp}", f"output={out}", "ray.progress_bars=false", "report.enabled=false",
                            f"select.k={args.captions // 10}", *args.set]))
    t = time.perf_counter()
    manifest = run(job)
    ray_s = time.perf_counter() - t
    n = manifest["counts"]["generated"]
    print(f"ray pipeline: {n} images in {ray_s:.1f} s = {n / ray_s:.3f} images/s "
          f"(generate {manifest['wall_seconds']['generate']:.1f} s)", flush=True)
    return n / ray_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=1,
                    help="loop and pipeline alternated this many times (fresh outputs, a Ray of its own per pipeline run); the median ratio last")
    ap.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for the pipeline's run (e.g. resources.synth.torch_threads=2); repeatable")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    os.environ.setdefault("FACTORY_CACHE", str(tmp / "cache"))
    inp = write_captions(tmp / "captions.jsonl", args.captions)
    # warm the tiny-model cache so neither side pays for building it
    ensure_tiny_sdxl()
    ensure_tiny_clip()
    ratios = []
    for r in range(args.repeats):
        loop = timed_loop(args, inp, tmp / f"loop{r}")
        # A Ray of its own for each pipeline run, started outside the timing: a later run on the
        # same Ray would find Ray Data's helper actors already up (about 3 s less), which a job
        # submitted to a cluster does not.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                 runtime_env={"env_vars": {"FACTORY_CACHE": os.environ["FACTORY_CACHE"]}})
        if args.stats:
            logging.getLogger("factory").setLevel(logging.DEBUG)
            logging.basicConfig()
        ratios.append(timed_pipeline(args, inp, tmp / f"ray{r}") / loop)
        ray.shutdown()
        if args.repeats > 1:
            print(f"repeat {r + 1}: ratio {ratios[-1]:.3f}", flush=True)
    label = f"median of {args.repeats} " if args.repeats > 1 else ""
    print(f"pipeline/loop throughput ratio: {label}{float(np.median(ratios)):.3f}")


if __name__ == "__main__":
    main()
