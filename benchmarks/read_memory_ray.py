"""The Ray phases of benchmarks/read_memory.py, each run by it in a process of its own:

    python benchmarks/read_memory_ray.py --phase scan|stream --file CAPTIONS [--cpus 2] [--block-mb MB]

  scan    factory.prepass.run_prepass through Ray tasks (ReadFiles, then ScanKeys), as a run's
          pre-pass (default curation; it collects every kept row's keys on the driver);
  stream  the ReadFiles(again=True) stage through Ray (factory.engine.stream.map_files), as the
          generation pass reads, its blocks pulled to the driver and dropped.
Prints one JSON line: rows, seconds (and for the scan the keys kept on the driver).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from factory.config import compose  # noqa: E402
from factory.engine import ray_setup, stream  # noqa: E402
from factory.io.read_files import ReadFiles  # noqa: E402
from factory.job import load_job  # noqa: E402
from factory.prepass import run_prepass  # noqa: E402


def phase(name: str, path: str, cpus: int, block_mb: float | None = None) -> dict:
    """One way of reading `path` through a fresh local Ray; returns rows and seconds."""
    job = load_job(compose(["ray.progress_bars=false"] + ([f"ray.block_size_mb={block_mb}"] if block_mb else [])))
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray_setup.configure_data_context(job.settings.ray)
    cpu = float(job.config["resources"]["cpu_task_cpus"])
    t = time.perf_counter()
    if name == "scan":
        pre = run_prepass([path], job.pipeline, cpu, local_max_mb=0)
        rows, extra = pre.n_read, {"keys": pre.n_kept, "keys_mb": round(pre.kept.size_bytes() / 2**20)}
    elif name == "stream":
        rows, extra = sum(b.num_rows for b in stream.map_files([path], [ReadFiles(again=True)], cpu)), {}
    else:
        raise SystemExit(f"unknown phase {name!r}: expected scan or stream")
    seconds = round(time.perf_counter() - t, 1)
    ray.shutdown()
    return {"rows": rows, "seconds": seconds, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--block-mb", type=float)
    args = ap.parse_args()
    print(json.dumps(phase(args.phase, args.file, args.cpus, args.block_mb)))


if __name__ == "__main__":
    main()
