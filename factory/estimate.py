"""`python -m factory estimate [key=value ...]`: what a run will cost, before it runs.

Counts the input through the reader, the caption rules and deduplication, times a short calibration of the
chosen model and scorer on this machine (or takes estimate.seconds_per_image), and prints captions
in and after curation, images to generate, GPU-hours, wall hours on N GPUs and storage.
"""
from __future__ import annotations

import logging
import platform
import random
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S

log = logging.getLogger("factory")

# Bytes per pixel of an encoded image when none was measured: rough figures for photographs.
ASSUMED_BYTES_PER_PIXEL = {"png": 1.5, "webp": 0.25, "jpeg": 0.3, "jpg": 0.3}
ROW_OVERHEAD_BYTES = 64  # the score, seed and size columns of one Parquet row


def scan_input(paths: list[str], sample_rows: int, seed: int = 0, rules_cfg: dict | None = None, dedup: dict | None = None,
               near_dup: dict | None = None) -> dict:
    """Rows read, rejected by the reader, by the caption rules and as duplicates (exact, and near
    when `near_dup` is enabled), each by reason, over the whole input with the run's own code, and
    a uniform sample of the curated rest.

    The sample (reservoir, fixed seed) gives the calibration its captions and the storage figure
    its caption size.
    """
    from factory.curate.near_dup import find_all_duplicates, minhash_params, search_keys
    from factory.curate.rules import CaptionRules
    from factory.io.read import read_caption_file

    rules = CaptionRules(**rules_cfg) if rules_cfg else None
    minhash = minhash_params(near_dup)

    def count(into: dict, reasons: list) -> None:
        for r in reasons:
            into[r] = into.get(r, 0) + 1

    rng = random.Random(seed)
    n_read, n_valid, seen, reader, failed = 0, 0, 0, {}, {}
    sample: list[tuple[int, str]] = []  # (pos, caption)
    keys = []
    for i, path in enumerate(paths):
        t = read_caption_file(path, i)
        n_read += t.num_rows
        count(reader, t.column(S.REASON).drop_null().to_pylist())
        n_valid += t.column(S.REASON).null_count
        if rules:
            valid = pc.is_null(t.column(S.REASON))
            t = rules(t)
            count(failed, t.column(S.REASON).filter(valid).drop_null().to_pylist())
        keys.append(search_keys(t, minhash))
        passed = t.filter(pc.is_null(t.column(S.REASON)))
        for pos, cap in zip(passed.column(S.POS).to_pylist(), passed.column(S.CAPTION).to_pylist()):
            seen += 1
            if len(sample) < sample_rows:
                sample.append((pos, cap))
            elif (j := rng.randrange(seen)) < sample_rows:
                sample[j] = (pos, cap)
    dups = find_all_duplicates(pa.concat_tables(keys), dedup or {}, near_dup) if keys else pa.table(
        {S.POS: pa.array([], pa.int64()), S.REASON: pa.array([], pa.string())})
    dup_pos = set(dups.column(S.POS).to_pylist())
    by_dup = {}
    count(by_dup, dups.column(S.REASON).to_pylist())
    return {
        "read": n_read,
        "valid": n_valid,
        "reader_rejects": reader,
        "rules_failed": dict(sorted(failed.items(), key=lambda kv: -kv[1])),
        "duplicates": by_dup,
        "curated": seen - dups.num_rows,
        "sample": [cap for pos, cap in sample if pos not in dup_pos],
    }


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def calibrate(cfg: dict, captions: list[str], batches: int = 1) -> dict:
    """Seconds per image of synthesis + scoring, after one untimed warm-up batch; model loading not counted."""
    from factory.io.write import encode_image
    from factory.score.scorer import ClipSsimScorer
    from factory.stage_args import score_kwargs, synth_kwargs
    from factory.synth.diffusion import DiffusionSynth

    if not captions:
        captions = ["A photo of a red bicycle leaning against a brick wall in the afternoon sun."]
    n = max(1, int(cfg["synth"]["batch_size"]))
    t = time.perf_counter()
    synth = DiffusionSynth(**synth_kwargs(cfg))
    scorer = ClipSsimScorer(**score_kwargs(cfg))
    load_s = time.perf_counter() - t

    def batch(b: int) -> dict:
        caps = [captions[(b * n + i) % len(captions)] for i in range(n)]
        return {S.ID: np.array([f"calibration-{b}-{i}" for i in range(n)], dtype=object), S.CAPTION: np.array(caps, dtype=object),
                S.SAMPLE: np.zeros(n, np.int32), S.SEED: np.arange(b * n, (b + 1) * n, dtype=np.int64)}

    scorer(synth(batch(0)))  # warm-up: kernels, compilation, caches
    synth_s = score_s = 0.0
    sizes = []
    fmt, quality = cfg["image"]["format"], cfg["image"].get("quality", 95)
    for b in range(1, max(1, batches) + 1):
        t = time.perf_counter()
        out = synth(batch(b))
        synth_s += time.perf_counter() - t
        t = time.perf_counter()
        scorer(out)
        score_s += time.perf_counter() - t
        sizes.extend(len(encode_image(im, fmt, quality)) for im in out[S.IMAGE])
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
        "device": device_name(cfg["model"]["device"]),
    }


def native_size(path: str) -> int | None:
    """The image side a diffusers model makes by default (its UNet's sample size times its VAE's
    scale), read from its configs without loading it; None for a hub id (no download here)."""
    import json
    import os

    if path == "tiny":
        from factory.synth.tiny import TINY_SAMPLE_SIZE

        return 2 * TINY_SAMPLE_SIZE
    try:
        with open(os.path.join(path, "unet", "config.json")) as f:
            sample = int(json.load(f)["sample_size"])
        with open(os.path.join(path, "vae", "config.json")) as f:
            levels = len(json.load(f)["block_out_channels"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return sample * 2 ** (levels - 1)


def estimate(cfg: dict) -> dict:
    """The figures of the estimate table for a resolved plain config."""
    from factory.io.read import InputError, list_inputs
    from factory.run import SAMPLE_INPUT, check_settings
    from factory.select import resolve_k

    check_settings(cfg)  # what a run would refuse, the estimate refuses too
    est = cfg.get("estimate", {})
    gpus = est.get("gpus", 1)
    if not isinstance(gpus, (int, float)) or gpus <= 0:
        raise ValueError(f"estimate.gpus must be > 0, got {gpus}")
    paths = list_inputs(cfg.get("input") or SAMPLE_INPUT)
    cur = cfg["curate"]
    scan = scan_input(paths, int(est.get("sample_rows", 2000)), rules_cfg=cur["rules"], dedup=cur["dedup"], near_dup=cur.get("near_dup"))
    if scan["read"] == 0:
        raise InputError(f"input is empty: no caption rows in {cfg.get('input')}")
    failed = scan["rules_failed"]
    rate = 1.0 - sum(failed.values()) / scan["valid"] if scan["valid"] else 1.0
    curated = scan["curated"]
    not_counted = [name for name, on in (("perplexity", ((cur.get("rules") or {}).get("perplexity") or {}).get("enabled")),
                                         ("LLM judge", (cur.get("llm") or {}).get("enabled"))) if on]
    repeat = int(cfg["synth"]["repeat"])
    images = curated * repeat
    selected = resolve_k(curated, cfg["select"].get("k"), cfg["select"].get("fraction"))

    fmt = cfg["image"]["format"]
    if est.get("seconds_per_image") is not None:
        try:
            spi = float(est["seconds_per_image"])
        except (TypeError, ValueError):
            raise ValueError(f"estimate.seconds_per_image must be a number > 0, got {est['seconds_per_image']!r}") from None
        if spi <= 0:
            raise ValueError(f"estimate.seconds_per_image must be > 0, got {spi}")
        cal = {"seconds_per_image": spi, "device": "given (estimate.seconds_per_image)"}
    else:
        cal = calibrate(cfg, scan["sample"], int(est.get("calibration_batches", 1)))
        spi = cal["seconds_per_image"]
    if est.get("image_bytes") is not None:
        image_bytes, bytes_from = float(est["image_bytes"]), "given"
    elif "image_bytes" in cal:
        image_bytes, bytes_from = cal["image_bytes"], "measured"
    else:
        native = native_size(cfg["model"]["path"])
        side_h = cfg["model"].get("height") or native or 1024
        side_w = cfg["model"].get("width") or native or 1024
        image_bytes, bytes_from = side_h * side_w * ASSUMED_BYTES_PER_PIXEL[fmt], f"assumed {side_w}x{side_h}"
        if not (native or (cfg["model"].get("height") and cfg["model"].get("width"))):
            bytes_from += ", SDXL's size: the model's own is not known offline"
    caption_bytes = float(np.mean([len(c.encode()) for c in scan["sample"]])) if scan["sample"] else 100.0
    row_bytes = image_bytes + caption_bytes + ROW_OVERHEAD_BYTES
    exports = cfg.get("export", {})
    export_copies = int(bool(exports.get("llava"))) + int(bool(exports.get("webdataset")))
    gpu_hours = images * spi / 3600
    return {
        "input_files": len(paths),
        "captions_in": scan["read"],
        "reader_rejects": scan["reader_rejects"],
        "duplicates": scan["duplicates"],
        "rules_pass_rate": rate,
        "rules_failed": failed,
        "curated": curated,
        "curation_not_counted": not_counted,
        "repeat": repeat,
        "images": images,
        "selected": selected,
        "seconds_per_image": spi,
        "calibration": cal,
        "gpu_hours": gpu_hours,
        "gpus": gpus,
        "wall_hours": gpu_hours / gpus,
        "image_bytes": image_bytes,
        "image_bytes_from": bytes_from,
        "image_format": fmt,
        "candidates_bytes": images * row_bytes,
        "dataset_bytes": selected * row_bytes,
        "exports_bytes": selected * image_bytes * export_copies,
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
        ("images to generate", f"{e['images']:,}", f"{e['curated']:,} captions × repeat {e['repeat']}"),
        ("pairs selected", f"{e['selected']:,}", "select.k / select.fraction"),
        ("seconds per image", f"{e['seconds_per_image']:.4g}", cal["device"] if "images" not in cal else
         f"synth {cal['synth_s_per_image']:.4g} + score {cal['score_s_per_image']:.4g}, {cal['image_size']}, batch {cal['batch_size']}, on {cal['device']}"),
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
    from factory.__main__ import user_error
    from factory.config import compose, override_error, unknown_added_key

    if overrides in (["-h"], ["--help"]):
        print("usage: python -m factory estimate [key=value ...]: the run's own overrides (input=, model=, synth.repeat=, "
              "select.k=, ...) and estimate.gpus, estimate.seconds_per_image, estimate.sample_rows; see docs/outputs.md")
        return 0
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = compose(overrides)
        if error := unknown_added_key(overrides, cfg):
            print(f"error: {error}", file=sys.stderr)
            return 2
        figures = estimate(cfg)
    except Exception as exc:
        msg = override_error(exc) or user_error(exc)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    for line in table_lines(figures):
        print(line)
    return 0
