"""The output folder: its parts, manifest.json, and whether a run may resume it.

The manifest records the resume fingerprint: the parameters of the stages that make a sample
(factory/pipeline.py Pipeline.fingerprint), one value per config key. A run on an output made
with other values is refused, naming the keys; a key an older manifest lacks counts at the
stage's default for it.
"""
from __future__ import annotations

import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

from factory.errors import RunError
from factory.io import files
from factory.io.redact import redact_all

if TYPE_CHECKING:  # the manifest is read by `status` too, which needs no stage code
    from factory.pipeline import Pipeline

PARTS = ("candidates", "dataset", "rejects", "report", "llm_judge", "curated")
FINGERPRINT_VERSION = 3
# What fingerprints of version 1 (before the stage contract) wrote differently: the embedded tiny
# models were named by magic values; they are classes now (conf/model/tiny.yaml: TinySDXL with
# path null, tiny_refiner; conf/scorer/tiny.yaml: TinyClipScorer, whose arch is factory-tiny-clip).
V1_VALUES = {("model.path", "tiny"): None, ("model.refiner_path", "tiny"): None, ("scorer.arch", "tiny"): "factory-tiny-clip"}


def run_dirs(output: str) -> dict:
    return {name: files.join(output, name) for name in PARTS} | {
        "output": output,
        "manifest": files.join(output, "manifest.json"),
        "curated_ids": files.join(output, "curated_ids.parquet"),
        "losers": files.join(output, ".duplicates.parquet"),  # the pre-pass's decision, read by the stream
    }


def read_manifest(path: str) -> dict:
    """A run's manifest.json; ValueError naming the file when it is no JSON object."""
    try:
        m = json.loads(files.read_bytes(path))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path} is not a manifest of this factory (a JSON {type(m).__name__})")
    return m


def leaves(fp: dict) -> dict:
    """A fingerprint as one value per key (model.steps, not model): version 1 stored groups whole."""
    flat = {}
    for name, v in fp.items():
        if isinstance(v, dict):
            flat.update({f"{name}.{k}": x for k, x in v.items()})
        else:
            flat[name] = v
    return flat


def legacy_generator(manifest: dict) -> str | None:
    """The generator of the candidates an output holds from before the generator column (version
    1 and 2 fingerprints: one generator, `model`); carried forward by every later manifest."""
    if "legacy_generator" in manifest:
        return manifest["legacy_generator"]
    if manifest.get("fingerprint_version", 1) >= 3:
        return None
    return str(leaves(manifest.get("fingerprint", {})).get("model.name", "generator"))


def recorded_fingerprint(manifest: dict) -> dict:
    """The fingerprint a manifest records, in today's keys and values."""
    fp = leaves(manifest.get("fingerprint", {}))
    version = manifest.get("fingerprint_version", 1)
    if version >= FINGERPRINT_VERSION:
        return fp
    if version < 2:
        raw, fp = fp, {k: V1_VALUES.get((k, v), v) if isinstance(v, str) else v for k, v in fp.items()}
        if raw.get("model.refiner_path") == "tiny":
            fp["model.tiny_refiner"] = True
    # Before version 3 the one generator's keys were model.*, and synth.steps, .guidance and
    # .negative_prompt held what it used.
    name = legacy_generator(manifest)
    out = {f"generators.{name}.{k[6:]}" if k.startswith("model.") else k: v for k, v in fp.items()}
    for alias in ("steps", "guidance", "negative_prompt"):
        if f"synth.{alias}" in out:
            out[f"generators.{name}.{alias}"] = out.pop(f"synth.{alias}")
    return out


def recorded_generators(fingerprint: dict) -> set[str]:
    return {k.split(".")[1] for k in fingerprint if k.startswith("generators.")}


def fingerprint_to_record(pipeline: "Pipeline", previous: dict | None) -> dict:
    """This run's fingerprint, plus the keys of generators an earlier run of the output ran and this
    one does not (their samples stay on disk: a later run that lists them again is checked)."""
    mine = pipeline.fingerprint()
    old = recorded_fingerprint(previous) if previous else {}
    gone = recorded_generators(old) - set(pipeline.generator_names())
    return {**{k: v for k, v in old.items() if k.startswith("generators.") and k.split(".")[1] in gone}, **mine}


def changed_settings(pipeline: "Pipeline", manifest: dict) -> list[str]:
    """The fingerprinted keys whose values differ from what the manifest recorded, as the config
    spells them; a key it lacks counts at the stage's default for it. Keys it has that are no
    longer fingerprinted are ignored, and so is a generator it never ran (it starts afresh)."""
    mine, theirs, implied = pipeline.fingerprint(), recorded_fingerprint(manifest), pipeline.fingerprint_defaults()
    ran, spelling, missing = recorded_generators(theirs), pipeline.spelling(), object()
    compared = [k for k in mine if not k.startswith("generators.") or k.split(".")[1] in ran]
    return sorted(spelling.get(k, k) for k in compared if mine[k] != theirs.get(k, implied.get(k, missing)))


def check_resume(pipeline: "Pipeline", dirs: dict, output: str, allow_change: bool) -> dict | None:
    """The previous manifest if this output holds a run of the same settings; refuse a different one."""
    if not files.exists(dirs["manifest"]):
        if files.list_files(dirs["candidates"], ".parquet"):
            raise RunError(f"{dirs['candidates']} holds candidates but no manifest.json: not a run of this factory; use a new output=")
        return None
    try:
        old = read_manifest(dirs["manifest"])
    except ValueError as e:
        raise RunError(f"{e}; move it away to start this output afresh") from None
    # Only samples on disk can mix: a run that stopped before its first candidate (a bad model path,
    # a refused setting) binds its output to nothing.
    changed = changed_settings(pipeline, old) if files.list_files(dirs["candidates"], ".parquet") else []
    if changed and not allow_change:
        raise RunError(
            f"{output} was made with other settings ({', '.join(changed)}); resuming would mix two runs. "
            "Use a new output=, or resume.allow_config_change=true to go on anyway"
        )
    return old


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("synth-factory", "ray", "torch", "diffusers", "transformers", "open_clip_torch", "pyarrow", "hydra-core"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest:
    """manifest.json, rewritten atomically whenever it changes."""

    def __init__(self, path: str, config: dict, fingerprint: dict, previous: dict | None, guard: Callable[[], None] = lambda: None):
        self.path, self.guard = path, guard  # guard raises when the output is no longer this run's
        self.started = False  # set once the run changes output=: from then on a stop is recorded
        self.data = {
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_at": round(time.time(), 3),  # epoch seconds, for `python -m factory status`
            "config": redact_all(config),  # shareable: URIs without their credentials (the run uses its own config)
            "fingerprint": fingerprint,
            "fingerprint_version": FINGERPRINT_VERSION,
            "versions": package_versions(),
            "runs": (previous or {}).get("runs", 0) + 1,
            "legacy_generator": legacy_generator(previous) if previous else None,
            "counts": {},
            "wall_seconds": {},
        }

    def save(self) -> None:
        self.guard()
        self.data["updated_at"] = round(time.time(), 3)
        self.data["driver_peak_rss_mib"] = driver_peak_rss_mib()
        files.write_json_atomic(self.path, self.data)


def driver_peak_rss_mib() -> float:
    """The peak resident memory of this process (the run's driver) so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
