"""Helpers shared by the benchmarks: generated captions that pass the rules, a local Ray of their own."""
from __future__ import annotations

import json
import random
from pathlib import Path

import ray

from factory.engine.shuffle import ONE_WORKER_POOL

ROOT = Path(__file__).resolve().parent.parent

SUBJECTS = ["a golden retriever", "an old fisherman", "a red vintage car", "a bowl of ramen", "a snowy mountain cabin",
            "two children", "a tabby cat", "a lighthouse", "a street musician", "a hot air balloon", "a wooden sailboat",
            "a bustling night market", "a glass teapot", "a city skyline", "a field of sunflowers", "an astronaut",
            "a steam locomotive", "a sleeping fox", "a bakery window", "a mossy stone bridge"]
ACTIONS = ["resting", "standing", "glowing", "parked", "waiting", "reflected", "framed", "drifting"]
PLACES = ["on a rainy street in Tokyo", "beside a calm lake at dawn", "in a sunlit kitchen", "under a starry sky",
          "on a crowded beach", "in an autumn forest", "at the edge of a cliff", "in a quiet library",
          "inside a greenhouse", "near a busy harbor", "in a snowy village"]
STYLES = ["soft morning light", "warm golden tones", "crisp winter air", "vivid saturated colors", "a misty atmosphere",
          "a shallow depth of field", "long evening shadows"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        c = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(ACTIONS)} {rng.choice(PLACES)}, with {rng.choice(STYLES)}, photo {len(out)}."
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def write_captions(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps({"id": i, "caption": c}) + "\n" for i, c in enumerate(captions(n, seed))))
    return path


def local_ray(cpus: int) -> None:
    """A local Ray of the benchmark's own (or a test's, if one is up already), quiet, with the
    shuffles' one-worker pools, and Ray Data without progress bars."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **ONE_WORKER_POOL}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
