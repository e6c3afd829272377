"""The device check's figures: the synthesis stage alone against the factory's finished run.

    python benchmarks/device/measure.py RUN/manifest.json CAPTIONS --images N [--json F] [--summary F]

Builds the generator stage from the run's resolved config in manifest.json through the pipeline's
own code (factory.pipeline: the model node and the synth.* keys bound into it), so it loads the
same folder the same way and compiles and warms up in its setup, as the run's actors did; then one untimed batch, then N of the run's captions
timed in batches of synth.batch_size. Prints the device, the end-to-end rates from the manifest,
the stage-alone rate and, last, their ratio (steady end to end / stage alone).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmark scripts import their helpers as top-level modules

from _common import Timer, device_name  # noqa: E402
from synth_gpu import stage_batch  # noqa: E402

from factory.devices import resolve_device  # noqa: E402
from factory.pipeline import GENERATOR_FROM, slot  # noqa: E402


def read_captions(path: Path) -> list[str]:
    return [json.loads(line)["caption"] for line in path.read_text().splitlines() if line.strip()]


def time_stage(cfg: dict, prompts: list[str], images: int) -> dict:
    """Images/s of the generator stage alone on `images` of `prompts`, after its warm-up and one untimed batch."""
    synth = slot(cfg["model"], "model", cfg, GENERATOR_FROM).stage
    device = resolve_device(synth.device)
    bs = int(synth.batch_size)
    t0 = time.perf_counter()
    synth.loaded()  # loads; with model.compile, compiles and warms up here
    ready_s = time.perf_counter() - t0
    synth(stage_batch(prompts[:bs], 0, synth.name))  # untimed: the first full batch (allocator, cuDNN/cuBLAS choices)
    images = min(images, len(prompts))
    with Timer(device) as t:
        for start in range(0, images, bs):
            out = synth(stage_batch(prompts[start : min(start + bs, images)], start, synth.name))
    assert out["image"].ndim == 4, out["image"].shape
    return {"device": device_name(device), "stage": type(synth).__name__, "images": images, "seconds": round(t.s, 3), "images_per_s": images / t.s,
            "batch_size": bs, "ready_s": round(ready_s, 1),
            "warmup_s": None if synth.warmup_s is None else round(synth.warmup_s, 1), "oom_retries": synth.oom_retries}


def run_figures(manifest: dict) -> dict:
    """End-to-end rates of a finished run from its manifest: over the whole generation phase, and
    over the synthesis operator's span as Ray Data timed it (first batch begun to last batch done)."""
    if manifest.get("status") != "complete":
        raise SystemExit(f"the run's manifest says status={manifest.get('status')!r}, not complete: {manifest.get('error')}")
    generated = int(manifest["counts"]["generated"])
    wall = float(manifest["wall_seconds"]["generate"])
    synth = next((s for s in manifest.get("stages", []) if s["stage"] == "synthesize"), {})
    if synth.get("rows_per_s") is None:
        raise SystemExit("the manifest has no span of the synthesize stage (stages[].rows_per_s): no steady rate")
    return {"generated": generated, "generate_s": wall, "phase_rate": generated / wall,
            "span_s": synth.get("wall_s"), "span_rate": synth.get("rows_per_s"), "busy_s": synth.get("busy_s")}


def report(run: dict, alone: dict) -> list[str]:
    """The figures, one a line; the last line is the ratio alone."""
    rate = alone["images_per_s"]
    warm = "" if alone["warmup_s"] is None else f", compile warm-up {alone['warmup_s']:.1f} s not timed"
    return [
        f"device: {alone['device']}",
        f"end to end, whole generation phase (manifest: counts.generated / wall_seconds.generate, with Ray's actor "
        f"start-up, model load and compilation): {run['phase_rate']:.3f} images/s ({run['generated']} in {run['generate_s']:.1f} s)",
        f"end to end, steady (manifest: stages.synthesize rows_per_s, generated / Ray Data's span of the synthesis "
        f"operator, scoring and writing alongside): {run['span_rate']:.3f} images/s ({run['generated']} in {run['span_s']:.1f} s"
        + ("" if run["busy_s"] is None else f"; the synthesis actor busy {run['busy_s']:.1f} s of it") + ")",
        f"synthesis stage alone ({alone['stage']}, the run's settings, batch {alone['batch_size']}{warm}): "
        f"{rate:.3f} images/s ({alone['images']} in {alone['seconds']:.1f} s)",
        f"ratio whole phase / stage alone: {run['phase_rate'] / rate:.3f}",
        "ratio end-to-end steady / synthesis stage alone:",
        f"{run['span_rate'] / rate:.3f}",
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="the finished run's manifest.json")
    p.add_argument("captions", type=Path, help="the run's captions file: the stage alone takes the same prompts")
    p.add_argument("--images", type=int, default=48, help="images timed through the stage alone")
    p.add_argument("--json", type=Path, help="also write the stage-alone figures here")
    p.add_argument("--summary", type=Path, help="also write the report here")
    a = p.parse_args(argv)
    manifest = json.loads(a.manifest.read_text())
    run = run_figures(manifest)  # before the stage: a failed run stops here
    alone = time_stage(manifest["config"], read_captions(a.captions), a.images)
    print(json.dumps(alone), flush=True)
    if a.json:
        a.json.write_text(json.dumps(alone, indent=1))
    lines = report(run, alone)
    if a.summary:
        a.summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
