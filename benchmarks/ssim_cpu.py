"""SSIM round trip (1024² → 768 → 336 → 768, grayscale, SSIM) on the CPU, one thread.

    python benchmarks/ssim_cpu.py                       # this checkout's factory/score/ssim.py
    python benchmarks/ssim_cpu.py --module OLD_SSIM.py  # another version of the module, side by side

Prints milliseconds per image last (the minimum of --repeats runs after one warm-up).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default=str(ROOT / "factory" / "score" / "ssim.py"))
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("ssim_under_test", args.module)
    ssim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ssim)
    # A smooth photo-like 1024² image: random 64² colours scaled up.
    small = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)).float()
    image = torch.nn.functional.interpolate(small, size=1024, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    image = image.permute(0, 2, 3, 1).contiguous()
    ssim.round_trip_ssim(image)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ssim.round_trip_ssim(image)
        times.append(time.perf_counter() - t)
    print(f"module {args.module}; median {sorted(times)[len(times) // 2] * 1e3:.1f} ms")
    print(f"SSIM round trip from 1024², 1 thread: {min(times) * 1e3:.1f} ms per image")


if __name__ == "__main__":
    sys.exit(main())
