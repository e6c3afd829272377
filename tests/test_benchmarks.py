"""Each GPU benchmark runs on CPU with --tiny and prints its key figure last; the SDXL architecture
kept in the repository builds to the published parameter counts and FLOPs."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["synth_gpu.py", "score_gpu.py", "pipeline_gpu.py"])
def test_tiny_benchmark_prints_a_number_last(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACTORY_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--tiny"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[1].startswith("device: CPU")
    value = float(lines[-1])
    assert math.isfinite(value) and value > 0


def test_sdxl_architecture_matches_published_counts():
    from benchmarks.arch.sdxl_arch import build_sdxl_modules, sdxl_arch, unet_forward_flops

    arch = sdxl_arch()
    modules = build_sdxl_modules("meta")  # shapes only: nothing allocated
    for name, module in modules.items():
        assert sum(p.numel() for p in module.parameters()) == arch["modules"][name]["parameters"], name
    flops = unet_forward_flops(modules["unet"], 1, 1024, 1024)
    assert flops / 1e12 == pytest.approx(arch["cost_1024px"]["unet_tflop_per_sample_forward"], rel=0.01)
