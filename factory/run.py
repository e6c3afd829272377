"""A whole run: check the output folder, stream generation, select, write dataset/ and the manifest."""
from __future__ import annotations

import collections
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable
from typing import NamedTuple
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.expand import sample_keys
from factory.io import files
from factory.io.read import InputError, list_inputs
from factory.jobs import OutputInUseError, OutputLock, remove_stale_staging, resolve_output
from factory.progress import ProgressLog

log = logging.getLogger("factory")

SAMPLE_INPUT = str(Path(__file__).parent / "data" / "sample_captions.jsonl")

# Settings that change what a sample is: resuming across a change of these would mix runs.
FINGERPRINT_KEYS = [("model",), ("scorer",), ("synth", "seed"), ("synth", "steps"), ("synth", "guidance"),
                    ("synth", "negative_prompt"), ("score", "lam"), ("score", "prefix"), ("score", "ssim_size"),
                    ("score", "ssim_low"), ("image", "format"), ("image", "quality")]
# Settings that only say where and how fast: free to change between a run and its resume.
NOT_FINGERPRINTED = {("model", "compile"), ("model", "compile_mode"), ("model", "channels_last"), ("model", "fuse_qkv"),
                     ("model", "batch_size"), ("model", "device"), ("model", "attention_backend"), ("model", "inductor_tuning"),
                     ("scorer", "device"), ("scorer", "compile"), ("scorer", "compile_mode"), ("scorer", "chunk_size")}
NOT_FINGERPRINTED_NAMES = {".".join(k) for k in NOT_FINGERPRINTED}  # an older manifest may still hold them


class RunError(Exception):
    """A run that must not start (or go on): one line for the user."""


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): ")


def error_line(exc: BaseException) -> str:
    """One plain line for an error. Ray's wrappers carry the remote traceback as coloured text:
    its last `SomeError: message` line is the error raised in the task or actor constructor."""
    text = ANSI.sub("", str(exc)).strip()
    if type(exc).__module__.startswith("ray"):
        raised = [ln.strip() for ln in text.splitlines() if EXCEPTION_LINE.match(ln.strip())]
        if raised:
            return raised[-1]
    return text.splitlines()[0] if text else type(exc).__name__


# Fingerprinted keys added after the first release, with the value a run made before them had in
# effect: an older output whose manifest lacks such a key still resumes at that value. A key added
# without an entry here makes every older output refuse to resume, so add one with each new key.
IMPLIED_BEFORE = {"model.vae_tiling": False}


def fingerprint(cfg: dict) -> dict:
    out = {}
    for key in FINGERPRINT_KEYS:
        v = cfg
        for k in key:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, dict):
            v = {k: x for k, x in v.items() if (key[0], k) not in NOT_FINGERPRINTED}
        out[".".join(key)] = v
    return out


def leaves(fp: dict) -> dict:
    """A fingerprint as one value per key (model.steps, not model): older manifests stored groups whole."""
    flat = {}
    for name, v in fp.items():
        if isinstance(v, dict):
            flat.update({f"{name}.{k}": x for k, x in v.items()})
        else:
            flat[name] = v
    return flat


def changed_settings(mine: dict, theirs: dict) -> list[str]:
    """The fingerprinted keys whose values differ; a key the older run lacks counts at its implied value."""
    mine, theirs = leaves(mine), leaves(theirs)
    missing = object()
    changed = []
    for key in sorted(set(mine) | set(theirs)):
        old = theirs.get(key, IMPLIED_BEFORE.get(key, missing))
        if key not in NOT_FINGERPRINTED_NAMES and mine.get(key, missing) != old:
            changed.append(key)
    return changed


def run_dirs(output: str) -> dict:
    return {name: files.join(output, name) for name in ("candidates", "dataset", "rejects", "report", "llm_judge")} | {
        "manifest": files.join(output, "manifest.json"),
        "curated_ids": files.join(output, "curated_ids.parquet"),
    }


def read_manifest(path: str) -> dict:
    """A run's manifest.json; ValueError naming the file when it is no JSON object."""
    import json

    try:
        m = json.loads(files.read_bytes(path))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path} is not a manifest of this factory (a JSON {type(m).__name__})")
    return m


def check_resume(cfg: dict, dirs: dict) -> dict | None:
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
    made = files.list_files(dirs["candidates"], ".parquet")
    changed = changed_settings(fingerprint(cfg), old.get("fingerprint", {})) if made else []
    if changed and not cfg["resume"].get("allow_config_change", False):
        raise RunError(
            f"{cfg['output']} was made with other settings ({', '.join(changed)}); resuming would mix two runs. "
            "Use a new output=, or resume.allow_config_change=true to go on anyway"
        )
    return old


def find_rejected_duplicates(paths: list[str], cfg: dict) -> tuple[pa.Table, int, pa.Table]:
    """The pre-pass: rows that lose a duplicate or near-duplicate group, as (pos, reason, detail),
    the number of rows read, and (id, norm_hash) of the captions left for the model stages (or
    synthesis). Only captions that pass the rules compete."""
    from factory import pipeline
    from factory.curate.near_dup import find_all_duplicates, minhash_params, without_rejected

    near_dup = cfg["curate"].get("near_dup")
    minhash = minhash_params(near_dup)  # checks the settings before the scan, not after it
    keys, n_read = pipeline.scan_keys(paths, cfg["resources"]["cpu_task_cpus"], cfg["ray"].get("local_scan_mb", 0), minhash,
                                      rules=cfg["curate"]["rules"])
    if n_read == 0:
        raise InputError(f"input is empty: no caption rows in {cfg['input']}")
    rejected = find_all_duplicates(keys, cfg["curate"]["dedup"], near_dup)
    if minhash:
        log.info("%d near duplicates (Jaccard >= %s)", pc.sum(pc.equal(rejected.column(S.REASON), S.R_NEAR_DUP)).as_py() or 0,
                 near_dup["threshold"])
    return rejected, n_read, without_rejected(keys, rejected).select([S.ID, S.NORM_HASH]).combine_chunks()


def model_stage_rejected_ids(rejects_dir: str) -> pa.Array:
    """Ids the perplexity filter or the LLM judge rejected in this run (they passed the pre-pass,
    so each id stands for one caption, unlike the ids of duplicate rows)."""

    t = files.read_parquet_dir(rejects_dir, [S.ID], filter=pc.field(S.REASON).isin([S.R_PERPLEXITY, S.R_LLM_JUDGE]))
    return pa.array([], pa.string()) if t is None else t.column(S.ID).combine_chunks()


def check_paths_shared(output: str, inputs: list[str]) -> int:
    """Refuse a multi-node run whose local output or input folder some node does not see: its
    files would land on (or be missing from) that node's own disk. Returns the nodes checked."""
    from factory import pipeline

    local_inputs = [files.resolve(p)[1] for p in inputs[:1] if not files.has_scheme(p)]
    if files.has_scheme(output) and not local_inputs:
        return 0
    marker = None
    probe = list(local_inputs)
    if not files.has_scheme(output):
        marker = files.join(output, ".factory-probe")  # hidden: no reader takes it for data
        files.write_bytes_atomic(marker, b"")
        probe.append(files.resolve(marker)[1])
    try:
        n_nodes, missing = pipeline.nodes_without(probe)
    finally:
        if marker:
            files.delete_file(marker)
    for path, nodes in missing.items():
        what = f"output={output} is a local folder" if marker and path == probe[-1] else f"input {path} is a local file"
        raise RunError(
            f"{what} that {len(nodes)} of {n_nodes} Ray nodes do not see ({', '.join(nodes[:3])}"
            f"{', ...' if len(nodes) > 3 else ''}): a multi-node run needs shared storage (NFS, or a URI such as s3://bucket/run)"
        )
    return n_nodes


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("synth-factory", "ray", "torch", "diffusers", "transformers", "open_clip_torch", "pyarrow", "hydra-core"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def count_rejects(rejects_dir: str) -> tuple[int, dict]:
    t = files.read_parquet_dir(rejects_dir, [S.REASON])
    if t is None:
        return 0, {}
    counts = t.group_by(S.REASON).aggregate([(S.REASON, "count")]).to_pylist()
    by_reason = {r[S.REASON]: r[f"{S.REASON}_count"] for r in counts}
    return t.num_rows, dict(sorted(by_reason.items(), key=lambda kv: -kv[1]))


def settled(reasons: pa.ChunkedArray | pa.Array):
    """Per row: whether the sample is done for good (usable, or unusable for a reason that stays)."""
    return pc.invert(pc.fill_null(pc.is_in(reasons, value_set=pa.array(S.RETRY_ON_RESUME)), False))


def count_candidates(candidates_dir: str) -> dict:
    """Samples in candidates/, each counted once by its best outcome: usable, else unusable for a
    reason that stays, else one a resumed run tries again (S.RETRY_ON_RESUME). A sample can sit
    there twice: made again after running out of memory, or by two runs at once (resume.take_over)."""
    t = files.read_parquet_dir(candidates_dir, [S.ID, S.SAMPLE, S.REASON])
    if t is None:
        return {"rows": 0, "usable": 0, "unusable": {}}
    rank = pc.if_else(pc.is_null(t.column(S.REASON)), 0, pc.if_else(settled(t.column(S.REASON)), 1, 2))
    t = t.append_column("_rank", rank).sort_by("_rank")
    # "first" skips nulls: a sample's reason is that of its best unusable row, read only where it has no usable one.
    best = t.group_by([S.ID, S.SAMPLE], use_threads=False).aggregate([("_rank", "min"), (S.REASON, "first")])
    bad = best.filter(pc.greater(best.column("_rank_min"), 0))
    reasons = collections.Counter(bad.column(f"{S.REASON}_first").to_pylist())
    return {"rows": best.num_rows, "usable": best.num_rows - bad.num_rows, "unusable": dict(reasons.most_common())}


def candidate_keys(paths: list[str]) -> tuple[pa.Table, pa.Table]:
    """(id, sample) of every candidate in the files `paths` that is done for good (a resumed run
    makes the rest again: S.RETRY_ON_RESUME), and (id, norm_hash) of the caption each id's samples
    were made from, read a batch at a time (captions of millions of rows never sit in memory)."""
    from factory.curate.dedup import text_hash

    keys, made = [], {}
    if paths:
        for batch in files.parquet_dataset(paths).to_batches(columns=[S.ID, S.SAMPLE, S.CAPTION, S.REASON]):
            done = settled(batch.column(S.REASON))
            keys.append(pa.table({S.ID: batch.column(S.ID), S.SAMPLE: batch.column(S.SAMPLE)}).filter(done))
            for i, caption in zip(batch.column(S.ID).to_pylist(), batch.column(S.CAPTION).to_pylist()):
                if i not in made:
                    made[i] = text_hash(caption)
    empty = pa.table({S.ID: pa.array([], pa.string()), S.SAMPLE: pa.array([], pa.int32())})
    made_from = pa.table({S.ID: pa.array(list(made), pa.string()), S.NORM_HASH: pa.array(list(made.values()), pa.int64())})
    return (pa.concat_tables(keys) if keys else empty), made_from


def changed_captions(kept: pa.Table, made_from: pa.Table) -> pa.Table:
    """Ids whose caption in the input now differs (beyond case, Unicode form and white space)
    from the caption their samples on disk were made from: (id, norm_hash, norm_hash_on_disk)."""
    both = kept.join(made_from, S.ID, join_type="inner", right_suffix="_on_disk", use_threads=False)
    return both.filter(pc.not_equal(both.column(S.NORM_HASH), both.column(S.NORM_HASH + "_on_disk")))


class Manifest:
    """manifest.json, rewritten atomically whenever it changes."""

    def __init__(self, path: str, cfg: dict, previous: dict | None, guard: Callable[[], None] = lambda: None):
        self.path, self.guard = path, guard  # guard raises when the output is no longer this run's
        self.data = {
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_at": round(time.time(), 3),  # epoch seconds, for `python -m factory status`
            "config": cfg,
            "fingerprint": fingerprint(cfg),
            "versions": package_versions(),
            "runs": (previous or {}).get("runs", 0) + 1,
            "counts": {},
            "wall_seconds": {},
        }

    def save(self) -> None:
        self.guard()
        self.data["updated_at"] = round(time.time(), 3)
        files.write_json_atomic(self.path, self.data)


def check_settings(cfg: dict) -> None:
    """Settings that would fail the run only after generation: refused before anything starts."""
    from factory.export import check_exports
    from factory.select import check_select

    check_select(cfg["select"].get("k"), cfg["select"].get("fraction"), cfg["select"].get("best_by", S.SCORE))
    if not cfg["curate"]["dedup"].get("ids", True):
        raise RunError("curate.dedup.ids=false: a caption's samples and images are keyed by its id, so ids must be unique "
                       "(rows with a repeated id are rejected as duplicate_id); to keep such rows, drop the id column "
                       "(a missing id becomes a hash of the caption) or give them new ids")
    check_exports(cfg.get("export", {}))
    from factory.io.write import IMAGE_FORMATS

    image = cfg.get("image", {})
    if image.get("format", "png") not in IMAGE_FORMATS:
        raise RunError(f"image.format={image.get('format')!r}: expected one of {sorted(IMAGE_FORMATS)}")
    quality = image.get("quality", 95)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise RunError(f"image.quality must be a whole number in [1, 100], got {quality!r}")
    backend = cfg["curate"].get("llm", {}).get("backend", "hf")
    if backend not in ("hf", "vllm"):
        raise RunError(f"curate.llm.backend={backend!r}: expected hf or vllm")
    for key, whole, low, nullable in NUMBERS:
        check_number(key, lookup(cfg, key), whole, low, nullable)
    for stage, pool in cfg.get("resources", {}).items():
        if not isinstance(pool, dict):
            continue
        if "actors" in pool:
            check_number(f"resources.{stage}.actors", pool["actors"], True, 1, False)
            if pool.get("max_actors") is not None:  # null: a fixed pool
                check_number(f"resources.{stage}.max_actors", pool["max_actors"], True, 1, False)
        for key, whole, low in (("num_cpus", False, 0), ("num_gpus", False, 0), ("torch_threads", True, 1)):
            check_number(f"resources.{stage}.{key}", pool.get(key), whole, low, True)
    rules = cfg["curate"].get("rules") or {}
    for key in ("alnum_min", "char_rep_max", "word_rep_max", "special_min", "special_max", "flagged_max"):
        check_number(f"curate.rules.{key}", rules.get(key), False, None, True)
    for key in ("model.height", "model.width"):
        if (v := lookup(cfg, key)) is not None and v % 8:
            raise RunError(f"{key} must be a multiple of 8 (the VAE's scale), got {v}")
    frac = cfg["model"].get("high_noise_frac")
    if cfg["model"].get("refiner_path") and not (isinstance(frac, (int, float)) and 0 < frac < 1):
        raise RunError(f"model.high_noise_frac must be a number between 0 and 1 with a refiner, got {frac!r}")


# (key, whole number?, lowest value (None: any), may be null?): numbers that would otherwise fail
# only once a stage gets its first batch, as a remote traceback.
NUMBERS = [
    ("synth.repeat", True, 1, False), ("synth.steps", True, 1, False), ("synth.batch_size", True, 1, False),
    ("score.batch_size", True, 1, False), ("synth.guidance", False, 0, False), ("synth.seed", True, None, False), ("score.lam", False, 0, False),
    ("score.ssim_size", True, 7, False), ("score.ssim_low", True, 7, False), ("progress_every_s", False, 0, False),
    ("model.height", True, 8, True), ("model.width", True, 8, True), ("scorer.chunk_size", True, 1, True),
    ("resources.cpu_task_cpus", False, 0, False), ("ray.block_size_mb", False, 1, False), ("ray.num_cpus", False, 1, True),
    ("curate.rules.min_chars", True, 0, True), ("curate.rules.max_chars", True, 0, True),
]


def lookup(cfg: dict, key: str):
    node = cfg
    for name in key.split("."):
        node = node.get(name) if isinstance(node, dict) else None
    return node


def check_number(key: str, value, whole: bool, low: float | None, nullable: bool) -> None:
    if value is None and nullable:
        return
    kind = "a whole number" if whole else "a number"
    ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and value < low):
        raise RunError(f"{key} must be {kind}{f' ≥ {low:g}' if low is not None else ''}{' or null' if nullable else ''}, got {value!r}")


def run(cfg: dict) -> dict:
    """Run the factory on a resolved plain config; returns the manifest."""
    from factory import pipeline

    t_start = time.perf_counter()
    output = cfg["output"]
    if not output:
        raise RunError("no output given: pass output=PATH (a folder, local or a URI)")
    output = cfg["output"] = resolve_output(output)  # absolute: the manifest says where the data is
    cfg["input"] = cfg.get("input") or SAMPLE_INPUT
    paths = list_inputs(cfg["input"])
    dirs = run_dirs(output)
    previous = check_resume(cfg, dirs)
    check_settings(cfg)
    lock = OutputLock(output)  # before anything in output= changes: one run at a time
    take_over = bool(cfg["resume"].get("take_over", False))
    if taken := lock.acquire(take_over):
        log.warning("%s was locked by a run on %s (pid %s) that %s; this run takes over", output, taken["host"], taken["pid"],
                    "may still run (resume.take_over=true)" if take_over else "is gone")
    try:
        pipeline.init_ray(cfg["ray"])
        pipeline.configure_data_context(cfg["ray"])
        pipeline.check_pool_cpus(cfg)
        nodes_checked = check_paths_shared(output, paths)
        lock.check()
        for d in ("candidates", "rejects"):
            files.remove_stale_temp(dirs[d])
        remove_stale_staging(output)  # a run killed while writing dataset/
        manifest = Manifest(dirs["manifest"], cfg, previous, guard=lambda: lock.check(fresh=True))
        manifest.data["nodes_sharing_paths"] = nodes_checked
        started = False
        try:
            # The pre-pass and the resume checks change nothing in output=: a run refused here leaves a
            # finished run's manifest, rejects/ and dataset/ as they were.
            scan = scan_input(cfg, paths, dirs, manifest)
            # Rejects are re-derived from the whole input on every run, so the old ones go first.
            files.delete_dir(dirs["rejects"])
            files.delete_dir(dirs["llm_judge"])  # the judge's verdicts, re-derived with the rejects
            started = True
            manifest.save()
            return generate_and_select(cfg, scan, dirs, manifest, t_start, lock.check)
        except OutputInUseError:
            raise  # manifest.json is the other run's now
        except BaseException as exc:  # manifest.json says the run stopped and why; candidates/ stays for a resume
            if started or previous is None:
                # Ctrl-C, or SIGTERM (`ray job stop`), which ray.init turns into SystemExit(15).
                stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
                what = {KeyboardInterrupt: "interrupted (Ctrl-C)", SystemExit: f"stopped by signal {exc}"}.get(
                    type(exc), f"{type(exc).__name__}: {error_line(exc)}")
                manifest.data.update(status="stopped" if stopped else "failed", error=what)
                try:
                    manifest.save()
                except OutputInUseError:
                    pass  # taken over meanwhile: manifest.json is the other run's now
            raise
    finally:
        lock.release()


class Scan(NamedTuple):
    """What the pre-pass found: what generation reads, skips and resumes."""
    paths: list[str]
    rejected: pa.Table  # (pos, reason, detail) of rows that lose a duplicate group
    n_read: int
    kept_ids: pa.Array  # ids of the rows that pass the rules and deduplication, before model stages
    done: np.ndarray  # sample keys already in candidates/
    on_disk: pa.Table  # (id, sample) of every candidate row before this run that is done for good
    on_disk_keys: np.ndarray  # the sample key of each of those rows
    files_before: frozenset  # the candidates files before this run


def count_current(keys: np.ndarray, on_disk: pa.Table, ids: pa.Array, repeat: int) -> int:
    """Samples on disk (`keys` per row of `on_disk`) that count toward a run of captions `ids`
    at `repeat`: what the manifest calls `resumed`."""
    from factory.select import is_current

    return len(np.unique(keys[is_current(on_disk, ids, repeat).to_numpy(zero_copy_only=False)]))


def scan_input(cfg: dict, paths: list[str], dirs: dict, manifest: Manifest) -> Scan:
    """The pre-pass over the input and the resume checks on candidates/; writes nothing."""
    wall, counts = manifest.data["wall_seconds"], manifest.data["counts"]
    t = time.perf_counter()
    rejected, n_read, kept = find_rejected_duplicates(paths, cfg)
    kept_ids = kept.column(S.ID).combine_chunks()
    repeat = int(cfg["synth"]["repeat"])
    wall["scan"] = round(time.perf_counter() - t, 3)
    counts["read"] = n_read
    counts["samples_at_most"] = len(kept_ids) * repeat  # before perplexity and the judge
    log.info("read %d caption rows from %d file(s); %d duplicates", n_read, len(paths), rejected.num_rows)

    files_before = files.list_files(dirs["candidates"], ".parquet")
    done_table, made_from = candidate_keys(files_before)
    changed = changed_captions(kept, made_from)
    if changed.num_rows:
        raise RunError(
            f"{changed.num_rows} caption(s) of the input differ from the captions their ids' samples in {dirs['candidates']} "
            f"were made from (first: id {changed.column(S.ID)[0].as_py()!r}): resuming would select old images for new "
            "captions; give changed captions new ids (or drop the id column), or use a new output="
        )
    on_disk = sample_keys(done_table)
    done = np.unique(on_disk)
    counts["resumed"] = count_current(on_disk, done_table, kept_ids, repeat)  # before the model stages reject any
    if len(done):
        log.info("resuming: %d samples already in %s (%d of them for this run's captions)", len(done), dirs["candidates"],
                 counts["resumed"])
    return Scan(paths, rejected, n_read, kept_ids, done, done_table, on_disk, frozenset(files_before))


def generate_and_select(cfg: dict, scan: Scan, dirs: dict, manifest: Manifest, t_start: float,
                        still_ours: Callable[[], None] = lambda: None) -> dict:
    """Streaming generation, selection, exports and report, recorded in `manifest`.
    `still_ours` raises once another run has taken the output over; it is called for each batch
    generated and before the dataset is replaced (and `manifest` checks it before each write)."""
    from factory import pipeline

    output = cfg["output"]
    wall = manifest.data["wall_seconds"]
    counts = manifest.data["counts"]
    cpu = cfg["resources"]["cpu_task_cpus"]
    paths, rejected, n_read, kept_ids, done = scan.paths, scan.rejected, scan.n_read, scan.kept_ids, scan.done
    repeat = int(cfg["synth"]["repeat"])

    t = time.perf_counter()
    unusable = 0
    busy = {"synthesize": 0.0, "score": 0.0}
    last_save = time.perf_counter()
    progress = ProgressLog(counts["samples_at_most"] - counts["resumed"], float(cfg.get("progress_every_s", 60)))
    gen = pipeline.generation_dataset(paths, rejected, done, dirs, cfg)
    try:
        for summary in gen.iter_batches(batch_size=None, batch_format="numpy"):
            still_ours()
            progress.add(int(summary["rows"].sum()))  # progress.done: the samples generated so far
            unusable += int(summary["unusable"].sum())
            busy["synthesize"] += float(summary["synth_s"].sum())
            busy["score"] += float(summary["score_s"].sum())
            if time.perf_counter() - last_save > 30:
                counts["generated"] = progress.done
                manifest.data["progress"] = progress.figures()
                manifest.save()
                last_save = time.perf_counter()
    except BaseException:  # the manifest a stopped run leaves counts what was made, also what the driver
        # had not heard of yet (written by the pool, its summary still in flight)
        try:
            # From the files' footers alone: `ray job stop` leaves 3 s before SIGKILL. Files are named by
            # their rows' keys, so a file that is new holds samples this run made.
            new = [p for p in files.list_files(dirs["candidates"], ".parquet") if p not in scan.files_before]
            counts["generated"] = max(progress.done, files.parquet_dataset(new).count_rows() if new else 0)
        except Exception:  # noqa: BLE001 (the storage may be what failed): the driver's count stands
            counts["generated"] = progress.done
        raise
    counts["generated"] = progress.done
    manifest.data["progress"] = progress.figures()
    wall["generate"] = round(time.perf_counter() - t, 3)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("generation stats:\n%s", gen.stats())
    ray_operators = pipeline.operator_stats(gen)

    n_rejected, by_reason = count_rejects(dirs["rejects"])
    cands = count_candidates(dirs["candidates"])
    if (cfg["curate"].get("llm") or {}).get("enabled"):
        from factory.curate.judge import count_verdicts

        counts["llm_judge"] = count_verdicts(dirs["llm_judge"])
    counts.update(
        rejected=n_rejected,
        rejected_by_reason=by_reason,
        curated=n_read - n_rejected,
        synthesized=cands["rows"],
        scored=cands["usable"],
        unusable=cands["unusable"],
    )

    manifest.guard()  # a fresh look at the lock: the next steps replace the run's outputs
    t = time.perf_counter()
    from factory.select import current_samples, read_scores, select_top_k

    # Only this run's samples compete: candidates made before the input, the curation settings or
    # synth.repeat changed are kept on disk but not selected, so a resumed run selects what a fresh
    # run with today's settings would.
    curated = pc.filter(kept_ids, pc.invert(pc.is_in(kept_ids, value_set=model_stage_rejected_ids(dirs["rejects"]))))
    if len(curated) < len(kept_ids):  # the judge or perplexity filter rejected some: their samples on disk no longer count
        counts["resumed"] = count_current(scan.on_disk_keys, scan.on_disk, curated, repeat)
    sizes = files.file_sizes(dirs["candidates"], ".parquet")
    candidate_paths = list(sizes)
    scores, counts["not_competing"] = current_samples(read_scores(candidate_paths), curated, repeat)
    # What competes, for the report: candidates of other captions stay on disk (and come back if they do).
    files.write_parquet_atomic(dirs["curated_ids"], pa.table({S.ID: curated}))
    if counts["not_competing"]:
        log.warning("%d candidates in %s do not compete: their caption is no longer curated (the input or the curation "
                    "changed since they were made) or their sample index is beyond synth.repeat", counts["not_competing"], dirs["candidates"])
    chosen, threshold, competing = select_top_k(scores, cfg["select"].get("k"), cfg["select"].get("fraction"),
                                                cfg["select"].get("best_by", S.SCORE))
    staging = files.join(output, f".dataset-staging-{os.getpid()}")
    files.delete_dir(staging)
    row_bytes = sum(sizes.values()) / max(1, cands["rows"])
    n_selected = pipeline.write_selected(candidate_paths, chosen, staging, cpu, cfg["ray"].get("local_select_mb", 0),
                                         sizes=sizes, row_bytes=row_bytes) if chosen.num_rows else 0
    if n_selected != chosen.num_rows:
        raise RunError(f"selection chose {chosen.num_rows} pairs but {n_selected} were written: a candidates file changed or "
                       "vanished during selection; run again to resume")
    # Exports go into the staging folder: dataset/ appears with them complete or not at all.
    if chosen.num_rows and any(cfg.get("export", {}).get(k) for k in ("llava", "webdataset", "hf")):
        from factory.export import write_exports

        t_export = time.perf_counter()
        manifest.data["exports"] = write_exports(staging, cfg["export"], dict(counts, selected=n_selected), cfg)
        wall["export"] = round(time.perf_counter() - t_export, 3)
        t += wall["export"]  # select's wall time leaves the exports out
    manifest.guard()  # a fresh look at the lock: the next steps replace the run's outputs
    files.delete_dir(dirs["dataset"])
    if chosen.num_rows:
        files.move_dir(staging, dirs["dataset"])
    else:
        files.makedirs(dirs["dataset"])
    wall["select"] = round(time.perf_counter() - t, 3)
    counts["selected"] = n_selected
    mean = lambda col: round(pc.mean(chosen.column(col)).as_py(), 6) if chosen.num_rows else None  # noqa: E731
    manifest.data["selection"] = {
        "k": chosen.num_rows,
        "competing_captions": competing,
        "threshold": threshold,
        "mean_clip_score": mean(S.CLIP_SCORE),
        "mean_ssim": mean(S.SSIM),
        "mean_score": mean(S.SCORE),
    }
    wall["total"] = round(time.perf_counter() - t_start, 3)
    manifest.data["busy_seconds"] = {k: round(v, 3) for k, v in busy.items()}
    from factory.stages import stage_summary

    manifest.data["ray_operators"] = ray_operators
    manifest.data["stages"] = stage_summary(manifest.data, manifest.data["ray_operators"], unusable)
    manifest.data["status"] = "complete"
    manifest.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest.save()
    if cfg.get("report", {}).get("enabled", True):
        from factory.report import report_after_run

        t = time.perf_counter()
        manifest.data["report"] = report_after_run(output)
        wall["report"] = round(time.perf_counter() - t, 3)
        wall["total"] = round(time.perf_counter() - t_start, 3)
        manifest.save()
    return manifest.data
