"""What a crash costs: run the tiny pipeline on 400 captions, SIGKILL it half way, resume it.

Prints the samples synthesized over both runs (the killed one and its resume) divided by the
samples an uninterrupted run synthesizes; the goal is at most 1.1. Printed LAST.

    PYTHONPATH=. python benchmarks/resume_cost.py [--captions 400] [--workdir DIR]

Synthesis is counted where it happens: a worker setup hook wraps the generator stage's generate in every
Ray worker and appends the batch size to a tally file when a batch *starts*, so work lost with
the killed run (batches in flight, synthesized but never written) counts against the resume.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBJECTS = ["A wooden sailboat", "A red vintage car", "A bakery window", "An old fisherman", "A desert caravan",
            "A lighthouse", "A hot air balloon", "A bowl of ramen", "A bustling night market", "An astronaut",
            "A pair of hiking boots", "A neon diner", "A steam locomotive", "A tabby cat", "A golden retriever",
            "A glass teapot", "A street musician", "A snowy mountain cabin", "Two children", "A stone bridge"]
ACTIONS = ["glowing", "resting", "standing", "parked", "drifting", "waiting", "covered in frost", "framed",
           "lit by candles", "reflected", "surrounded by fog"]
PLACES = ["at the edge of a cliff", "beside a calm lake at dawn", "on a cobblestone square", "inside a greenhouse",
          "in a sunlit kitchen", "under a starry sky", "in an autumn forest", "in a quiet library",
          "on a crowded beach", "near a busy harbor"]
STYLES = ["with soft morning light", "with vivid saturated colors", "with warm golden tones", "with a misty atmosphere",
          "with a shallow depth of field", "with dramatic sunset colors", "with high contrast shadows",
          "with crisp winter air"]


def make_captions(n: int, seed: int = 0) -> list[dict]:
    """n distinct captions in the bundled sample's style that pass the curation rules."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from factory import schema as S
    from factory.curate.rules import CaptionRules

    combos = list(itertools.product(SUBJECTS, ACTIONS, PLACES, STYLES))
    random.Random(seed).shuffle(combos)
    texts = [f"{s} {a} {p}, {st}." for s, a, p, st in combos]
    rows = pa.table({S.ID: [str(i) for i in range(len(texts))], S.CAPTION: texts, S.SOURCE: [""] * len(texts),
                     S.POS: list(range(len(texts))), S.RAW: texts, S.REASON: pa.nulls(len(texts), pa.string()),
                     S.DETAIL: pa.nulls(len(texts), pa.string())})
    rows = CaptionRules()(rows)
    kept = rows.filter(pc.is_null(rows.column(S.REASON))).column(S.CAPTION).to_pylist()
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} template captions pass the rules; asked for {n}")
    return [{"id": i + 1, "caption": c} for i, c in enumerate(kept[:n])]


OVERRIDES = ["ray.progress_bars=false", "ray.num_cpus=2", "synth.steps=2", "score.ssim_size=64", "score.ssim_low=32",
             "select.k=50"]


def _tally_synthesis():
    """Worker setup hook: count every sample whose synthesis starts, in the tally file."""
    from factory.synth.diffusion import Generator

    path = os.environ["RESUME_COST_TALLY"]
    original = Generator.generate

    def generate(self, prompts, seeds):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{len(prompts)}\n".encode())
        finally:
            os.close(fd)
        return original(self, prompts, seeds)

    Generator.generate = generate


def child(output: str, input_path: str, tally: str) -> None:
    """One run of the factory as a driver process, with the synthesis tally hook in every worker."""
    import ray

    from factory.config import compose
    from factory.job import load_job
    from factory.run import run

    env = {"RESUME_COST_TALLY": tally, "PYTHONPATH": str(ROOT), "FACTORY_CACHE": os.environ["FACTORY_CACHE"]}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env, "worker_process_setup_hook": _tally_synthesis})
    m = run(load_job(compose([f"input={input_path}", f"output={output}", *OVERRIDES])))
    print(json.dumps(m["counts"]))


def tally(path: Path) -> int:
    return sum(int(x) for x in path.read_text().split()) if path.exists() else 0


def candidate_rows(directory: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in directory.glob("*.parquet")) if directory.is_dir() else 0


def start(output: Path, input_path: Path, tally_path: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", str(output), str(input_path), str(tally_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"run failed (rc={proc.returncode}); see {log}:\n" + log.read_text()[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=400)
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of candidates written before the kill")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="resume-cost-"))
    shutil.rmtree(work / "clean", ignore_errors=True)
    shutil.rmtree(work / "crashed", ignore_errors=True)
    os.environ.setdefault("FACTORY_CACHE", str(work / "cache"))
    input_path = work / "captions.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in make_captions(args.captions)))
    for f in work.glob("*.tally"):
        f.unlink()

    t0 = time.time()
    finish(start(work / "clean", input_path, work / "clean.tally", work / "clean.log"), work / "clean.log")
    clean = tally(work / "clean.tally")
    print(f"clean run: {clean} samples synthesized in {time.time() - t0:.0f} s")

    target = int(args.kill_at * args.captions)
    proc = start(work / "crashed", input_path, work / "crashed.tally", work / "crashed.log")
    while candidate_rows(work / "crashed" / "candidates") < target:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before the kill; see {work / 'crashed.log'}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # the killed run's workers notice their raylet is gone and exit
    killed_tally, written = tally(work / "crashed.tally"), candidate_rows(work / "crashed" / "candidates")
    print(f"killed run: {killed_tally} samples synthesized, {written} written to candidates/ when killed")

    proc = start(work / "crashed", input_path, work / "crashed.tally", work / "resumed.log")
    finish(proc, work / "resumed.log")
    total = tally(work / "crashed.tally")
    m = json.loads((work / "crashed" / "manifest.json").read_text())
    print(f"resumed run: {total - killed_tally} samples synthesized (manifest: resumed {m['counts']['resumed']}, "
          f"generated {m['counts']['generated']})")
    print(f"workdir: {work}")
    print(f"synthesized over killed + resumed runs / clean run: {total} / {clean} = {total / clean:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
