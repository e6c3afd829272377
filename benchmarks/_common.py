"""Shared helpers of the benchmark scripts (run as `python benchmarks/<name>.py`)."""
from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def say(*parts) -> None:
    """Print at once: a benchmark cut short by a time limit still leaves its figures behind."""
    print(*parts, flush=True)


def captions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "factory" / "data" / "sample_captions.jsonl").read_text().splitlines() if line.strip()]
    texts = [r["caption"] for r in rows if isinstance(r, dict) and isinstance(r.get("caption"), str) and r["caption"].strip()]
    return [texts[i % len(texts)] for i in range(n)]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def header(script: str, device: str) -> None:
    say(f"# {script}  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    say(f"device: {device_name(device)}")
    say(f"torch {torch.__version__}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.s = time.perf_counter() - self.t0


def clip_scorer(arch: str, **fields):
    """The scoring stage, set up: the embedded tiny CLIP for arch "tiny", else open_clip's `arch`."""
    from factory.score.scorer import ClipSsimScorer
    from factory.score.tiny import TinyClipScorer

    stage = TinyClipScorer(**fields) if arch == "tiny" else ClipSsimScorer(arch=arch, **fields)
    return stage.loaded()
