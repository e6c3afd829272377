"""Curation at scale, through Ray (CPU): `python -m factory curate` with near-duplicate removal.

`--captions N` captions with planted exact copies (recased, re-spaced), near duplicates and
repeated ids are written by Ray tasks into `--files` JSONL files (the benchmark's process never
holds them). The originals are web-like (tests/fixtures/planted.web_caption: made-up words, so
two originals are never near duplicates by chance): the duplicate share stays the planted 11% at
any N, where the slot-vocabulary captions repeated themselves more as the pool grew (17% near
duplicates at 1M, 49% at 5M, and a near-duplicate verification that outgrew the disk at 10M).
Then `python -m factory curate curate.near_dup.enabled=true ray.local_scan_mb=0` runs on them
as a process of its own with a local Ray: the scan in Ray tasks, the keys and the kept rows in the
object store, the exact and near duplicate losers by keyed shuffles
(factory/engine/dist_dedup.py), curated/ and rejects/ written by the workers. Its manifest gives the
counts, the wall seconds and the driver's peak RSS (`driver_peak_rss_mib`). `--check` (small
pools) also curates through the driver path (the default ray.local_scan_mb) and compares curated/,
rejects/ and the counts.

The last two lines: a header, then captions/s of the whole command (Ray's start-up included) and
the driver's peak RSS in MiB.

    python benchmarks/scale_curate.py --captions 1000000 --files 50
    python benchmarks/scale_curate.py --captions 10000000 --files 500 --dir /big/disk
    python benchmarks/scale_curate.py --captions 20000 --check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import ray  # noqa: E402

from benchmarks.common import local_ray  # noqa: E402

from factory import schema as S  # noqa: E402
from tests.fixtures.planted import planted_pool, web_caption  # noqa: E402

CURATE = ["curate.near_dup.enabled=true", "ray.progress_bars=false", "progress_every_s=60"]


def write_file(batch: pa.Table, rows: int, directory: str) -> pa.Table:
    """Captions [f * rows, (f + 1) * rows) into captions-f.jsonl: planted duplicates, every 997th id repeated."""
    f = batch.column("id")[0].as_py()
    captions, _ = planted_pool(rows, near_fraction=0.08, exact_fraction=0.03, seed=f, distinct=web_caption)
    start = f * rows
    path = Path(directory) / f"captions-{f:05d}.jsonl"
    with path.open("w") as out:
        for i, c in enumerate(captions):
            pos = start + i
            out.write(json.dumps({"id": str(pos if pos % 997 else pos - 1), "caption": c}) + "\n")
    return pa.table({"bytes": [path.stat().st_size]})


def write_input(n_files: int, per_file: int, directory: Path, cpus: int) -> int:
    """The input files, written by Ray tasks on a local Ray that is shut down after (unless it was
    already up: a test's). Returns their bytes."""
    was_up = ray.is_initialized()
    local_ray(cpus)
    written = ray.data.range(n_files, override_num_blocks=n_files).map_batches(
        write_file, fn_kwargs={"rows": per_file, "directory": str(directory)}, batch_size=1, batch_format="pyarrow").materialize()
    size = sum(int(t.column("bytes").to_numpy().sum()) for t in ray.get(written.to_arrow_refs()))
    if not was_up:
        ray.shutdown()
    return size


def curate_process(argv: list[str]) -> int:
    """`python -m factory ARGV` as a process of its own, its output passed through."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "factory", *argv], env=env, cwd=ROOT).returncode


def curate(inp: Path, out: Path, extra: list[str], cpus: int, run_cli) -> dict:
    """One curate run; its manifest (exits on failure)."""
    code = run_cli(["curate", f"input={inp}", f"output={out}", f"ray.num_cpus={cpus}", *CURATE, *extra])
    if code != 0:
        raise SystemExit(f"python -m factory curate exited with {code}")
    return json.loads((out / "manifest.json").read_text())


def contents(out: Path) -> tuple[list, list]:
    """curated/ (id, caption) and rejects/ (id, reason, detail), sorted."""
    curated = pads.dataset(str(out / "curated")).to_table(columns=[S.ID, S.CAPTION])
    rejects = pads.dataset(str(out / "rejects")).to_table(columns=[S.ID, S.REASON, S.DETAIL])
    return (sorted(zip(*(curated.column(c).to_pylist() for c in curated.column_names))),
            sorted(zip(*(rejects.column(c).to_pylist() for c in rejects.column_names)), key=str))


def main(argv=None, run_cli=curate_process) -> tuple[float, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", type=int, default=100_000)
    p.add_argument("--files", type=int, default=None, help="input files (default: one per 20,000 captions)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--check", action="store_true", help="also curate through the driver path and compare (small pools)")
    p.add_argument("--dir", default=None, help="where the input and the outputs go (default: a temporary folder)")
    args = p.parse_args(argv)
    n_files = args.files or max(1, args.captions // 20_000)
    per_file = -(-args.captions // n_files)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        inp = Path(tmp) / "input"
        inp.mkdir()
        t0 = time.perf_counter()
        size = write_input(n_files, per_file, inp, args.cpus)
        print(f"{n_files * per_file:,} captions in {n_files} files ({size / 2**20:.0f} MiB) written by Ray tasks in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        m = curate(inp, Path(tmp) / "dist", ["ray.local_scan_mb=0"], args.cpus, run_cli)
        c, wall, rss = m["counts"], m["wall_seconds"], m["driver_peak_rss_mib"]
        print(f"curate (distributed): {c['read']:,} read, {c['rejected']:,} rejected {c['rejected_by_reason']}, "
              f"{c['curated']:,} curated; wall seconds {wall}; driver peak RSS {rss:.0f} MiB", flush=True)
        if args.check:
            local = curate(inp, Path(tmp) / "local", [], args.cpus, run_cli)
            same = contents(Path(tmp) / "dist") == contents(Path(tmp) / "local") and local["counts"] == m["counts"]
            print(f"driver path: {local['counts']['rejected']:,} rejected in {local['wall_seconds']['total']:.1f} s; "
                  f"equal: {same}", flush=True)
            if not same:
                raise SystemExit("the distributed curation differs from the driver path's")
    rate = c["read"] / wall["total"]
    print(f"pre-pass alone: {c['read'] / wall['scan']:.0f} captions/s")
    print("captions/s driver_peak_rss_mib")
    print(f"{rate:.0f} {rss:.0f}")
    return rate, rss


if __name__ == "__main__":
    main()
