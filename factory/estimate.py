"""`python -m factory estimate [key=value ...]`: what a run will cost, before it runs.

Counts the input through the reader, the caption rules and deduplication, times a short calibration of the
chosen model and scorer on this machine (or takes estimate.seconds_per_image), and prints captions
in and after curation, images to generate, GPU-hours, wall hours on N GPUs and storage.
"""
from __future__ import annotations

import logging
import platform
import sys
import time

import numpy as np
import torch

from factory import schema as S
from factory.config import compose, print_refusal, unknown_added_key
from factory.errors import SettingError
from factory.io.read import list_inputs
from factory.io.write import encode_image
from factory.job import Job, load_job
from factory.paths import SAMPLE_INPUT
from factory.prepass import run_prepass
from factory.select import resolve_k

log = logging.getLogger("factory")

# Bytes per pixel of an encoded image when none was measured: rough figures for photographs.
ASSUMED_BYTES_PER_PIXEL = {"png": 1.5, "webp": 0.25, "jpeg": 0.3, "jpg": 0.3}
ROW_OVERHEAD_BYTES = 64  # the score, seed and size columns of one Parquet row
# Figures measured on a named device (benchmarks/RESULTS.md, the table at its top): (device, the
# generator's family, the scorer's architecture) → (images/s of synthesis, pairs/s of scoring),
# each at the model config's own settings (model=sdxl: 1024², 30 steps, bf16, compiled).
MEASURED = {("h200", "sdxl", "ViT-L-14-336"): (1.131, 517.0)}


def device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def calibrate(job: Job, synth, captions: list[str], batches: int = 1) -> dict:
    """Seconds per image of one generator + the scorer, after one untimed warm-up batch; model loading not counted."""
    if not captions:
        captions = ["A photo of a red bicycle leaning against a brick wall in the afternoon sun."]
    scorer = job.pipeline.scorer.stage
    n = synth.batch_size
    t = time.perf_counter()
    synth.setup()
    scorer.setup()
    load_s = time.perf_counter() - t

    def batch(b: int) -> dict:
        caps = [captions[(b * n + i) % len(captions)] for i in range(n)]
        return {S.ID: np.array([f"calibration-{b}-{i}" for i in range(n)], dtype=object), S.CAPTION: np.array(caps, dtype=object),
                S.SAMPLE: np.zeros(n, np.int32), S.SEED: np.arange(b * n, (b + 1) * n, dtype=np.int64),
                S.GENERATOR: np.array([synth.name] * n, dtype=object)}

    scorer.process(synth.process(batch(0)))  # warm-up: kernels, compilation, caches
    synth_s = score_s = 0.0
    sizes = []
    image = job.settings.image
    for b in range(1, max(1, batches) + 1):
        t = time.perf_counter()
        out = synth.process(batch(b))
        synth_s += time.perf_counter() - t
        t = time.perf_counter()
        scorer.process(out)
        score_s += time.perf_counter() - t
        sizes.extend(len(encode_image(im, image.format, image.quality)) for im in out[S.IMAGE])
    images = n * max(1, batches)
    return {
        "images": images,
        "batch_size": n,
        "load_s": round(load_s, 3),
        "synth_s_per_image": synth_s / images,
        "score_s_per_image": score_s / images,
        "seconds_per_image": (synth_s + score_s) / images,
        "image_bytes": float(np.mean(sizes)),
        "image_size": f"{out[S.WIDTH][0]}x{out[S.HEIGHT][0]}",
        "device": device_name(synth.device),
    }


def measured(job: Job, synth, device: str) -> dict:
    """Seconds per image of one generator + the scorer from the figures measured on `device`."""
    key = (device.lower(), synth.family.name, getattr(job.pipeline.scorer.stage, "arch", None))
    if key not in MEASURED:
        known = ", ".join(f"estimate.device={d} with model={m} scorer arch {a}" for d, m, a in MEASURED)
        raise SettingError("estimate.device", f"={device!r}: nothing measured for {key[1]} and {key[2]} on it "
                           f"(benchmarks/RESULTS.md has: {known}); give estimate.seconds_per_image instead")
    synth_rate, score_rate = MEASURED[key]
    return {"seconds_per_image": 1 / synth_rate + 1 / score_rate,
            "device": f"{device} as measured in benchmarks/RESULTS.md: synthesis {synth_rate} images/s, scoring {score_rate:g} pairs/s"}


def seconds_per_image(job: Job, sample: list[str]) -> dict[str, dict]:
    """Per generator: estimate.seconds_per_image when given, else the figures measured on
    estimate.device, else a calibration on this machine (which needs the device the model asks for)."""
    est, gens = job.settings.estimate, [g.stage for g in job.pipeline.generators]
    if est.seconds_per_image is not None:
        given = {"seconds_per_image": float(est.seconds_per_image), "device": "given (estimate.seconds_per_image)"}
        return {g.name: given for g in gens}
    if est.device:
        return {g.name: measured(job, g, est.device) for g in gens}
    if any(s.on_gpu() for s in [*gens, job.pipeline.scorer.stage]) and not torch.cuda.is_available():
        raise SettingError("estimate.seconds_per_image", " is not set and this machine has no CUDA device to time the "
                           "model on (model.device=cuda): give estimate.seconds_per_image=S, or estimate.device=h200 for "
                           "the figures measured in benchmarks/RESULTS.md")
    return {g.name: calibrate(job, g, sample, est.calibration_batches) for g in gens}


def image_bytes(job: Job, generator, cal: dict) -> tuple[float, str]:
    """Bytes of one stored image of a generator: given, measured by its calibration, or assumed from the model's size."""
    est, fmt = job.settings.estimate, job.settings.image.format
    if est.image_bytes is not None:
        return float(est.image_bytes), "given"
    if "image_bytes" in cal:
        return cal["image_bytes"], "measured"
    native = generator.native_side()
    side_h, side_w = generator.height or native or 1024, generator.width or native or 1024
    note = f"assumed {side_w}x{side_h}"
    if not (native or (generator.height and generator.width)):
        note += ", SDXL's size: the model's own is not known offline"
    return side_h * side_w * ASSUMED_BYTES_PER_PIXEL[fmt], note


def estimate(job: Job) -> dict:
    """The figures of the estimate table for a checked job: what a run would refuse, the estimate refuses too."""
    s, pipeline = job.settings, job.pipeline
    paths = list_inputs(s.input or SAMPLE_INPUT, exclude=[s.output] if s.output else None)  # what the run reads
    pre = run_prepass(paths, pipeline, float(job.config["resources"]["cpu_task_cpus"]), s.ray.local_scan_mb,
                      sample_rows=s.estimate.sample_rows)
    rule_reasons = {r for f in pipeline.early_filters() for r in f.reasons}
    failed = {r: n for r, n in pre.rejected_by_reason.items() if r in rule_reasons}
    reader = {r: n for r, n in pre.rejected_by_reason.items() if r not in rule_reasons}
    valid = pre.n_read - sum(reader.values())
    curated = pre.n_kept
    images = curated * s.synth.repeat * len(pipeline.generators)
    selected = resolve_k(curated, s.select.k, s.select.fraction)
    cals = seconds_per_image(job, pre.sample)
    sizes = {g.stage.name: image_bytes(job, g.stage, cals[g.stage.name]) for g in pipeline.generators}
    spi = float(np.mean([c["seconds_per_image"] for c in cals.values()]))  # each generator makes as many images
    image_b = float(np.mean([b for b, _ in sizes.values()]))
    bytes_from = "; ".join(sorted({f for _, f in sizes.values()}))
    cal = next(iter(cals.values()))
    caption_bytes = float(np.mean([len(c.encode()) for c in pre.sample])) if pre.sample else 100.0
    row_bytes = image_b + caption_bytes + ROW_OVERHEAD_BYTES
    export_copies = int(s.export.llava) + int(s.export.webdataset)
    gpu_hours = images * spi / 3600
    return {
        "input_files": len(paths), "captions_in": pre.n_read, "reader_rejects": reader, "duplicates": pre.duplicates_by_reason(),
        "rules_pass_rate": 1.0 - sum(failed.values()) / valid if valid else 1.0, "rules_failed": failed,
        "curated": curated, "curation_not_counted": [f.name for f in pipeline.late_filters()],
        "repeat": s.synth.repeat, "generators": len(pipeline.generators), "images": images, "selected": selected,
        "seconds_per_image": spi, "calibration": cal, "by_generator": {n: c["seconds_per_image"] for n, c in cals.items()},
        "gpu_hours": gpu_hours, "gpus": s.estimate.gpus,
        "wall_hours": gpu_hours / s.estimate.gpus, "image_bytes": image_b, "image_bytes_from": bytes_from,
        "image_format": s.image.format, "candidates_bytes": images * row_bytes, "dataset_bytes": selected * row_bytes,
        "exports_bytes": selected * image_b * export_copies,
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def _hours(h: float) -> str:
    return f"{h:.3f}" if h < 10 else f"{h:,.1f}"


def table_lines(e: dict) -> list[str]:
    cal = e["calibration"]
    rejects = {**e["reader_rejects"], **e["duplicates"]}
    rows = [
        ("captions in", f"{e['captions_in']:,}", f"{e['input_files']} file(s)"),
        ("rejected: reader, duplicates", f"{sum(rejects.values()):,}", ", ".join(f"{k} {v}" for k, v in rejects.items()) or "none"),
        ("rules pass rate", f"{e['rules_pass_rate']:.1%}", "failed " + (", ".join(f"{k} {v}" for k, v in e["rules_failed"].items()) or "none")),
        ("captions after curation", f"{e['curated']:,}", "reader, rules and dedup, as the run counts them"
         + (f"; at most: {', '.join(e['curation_not_counted'])} not counted" if e["curation_not_counted"] else "")),
        ("images to generate", f"{e['images']:,}", f"{e['curated']:,} captions × repeat {e['repeat']}"
         + (f" × {e['generators']} generators" if e["generators"] > 1 else "")),
        ("pairs selected", f"{e['selected']:,}", "select.k / select.fraction"),
        ("seconds per image", f"{e['seconds_per_image']:.4g}", "the generators' mean (below)" if e["generators"] > 1 else
         cal["device"] if "images" not in cal else
         f"synth {cal['synth_s_per_image']:.4g} + score {cal['score_s_per_image']:.4g}, {cal['image_size']}, batch {cal['batch_size']}, on {cal['device']}"),
        *([("seconds per image, by generator", "", ", ".join(f"{n} {v:.4g}" for n, v in e["by_generator"].items()))]
          if e["generators"] > 1 else []),
        ("GPU-hours", _hours(e["gpu_hours"]), "images × seconds per image"),
        (f"wall hours on {e['gpus']:g} GPU(s)", _hours(e["wall_hours"]), "GPU-hours / GPUs, at full use"),
        ("storage: candidates/", human_bytes(e["candidates_bytes"]), f"{human_bytes(e['image_bytes'])} per {e['image_format']} image ({e['image_bytes_from']})"),
        ("storage: dataset/", human_bytes(e["dataset_bytes"]), "the selected pairs"),
    ]
    if e["exports_bytes"]:
        rows.append(("storage: exports", human_bytes(e["exports_bytes"]), "image copies in llava images/ and wds/"))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]


def main(overrides: list[str]) -> int:
    if overrides in (["-h"], ["--help"]):
        print("usage: python -m factory estimate [key=value ...]: the run's own overrides (input=, model=, synth.repeat=, "
              "select.k=, ...) and estimate.gpus, estimate.seconds_per_image, estimate.sample_rows; see docs/outputs.md")
        return 0
    logging.getLogger().setLevel(logging.WARNING)
    try:
        cfg = compose(overrides)
        if error := unknown_added_key(overrides, cfg):
            print(f"error: {error}", file=sys.stderr)
            return 2
        figures = estimate(load_job(cfg))
    except Exception as exc:
        return print_refusal(exc)
    for line in table_lines(figures):
        print(line)
    return 0
