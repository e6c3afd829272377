"""Before and during generation: the pre-pass with the resume checks (which write nothing), then
the streaming pass that fills candidates/, counted as it goes."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from factory import schema as S
from factory.counts import candidate_keys, changed_captions, count_current
from factory.engine import dist_resume, stream
from factory.engine.stats import operator_stats
from factory.errors import RunError
from factory.expand import sample_keys
from factory.io import files
from factory.job import Job
from factory.layout import Manifest
from factory.prepass import Prepass, run_prepass
from factory.progress import ProgressLog

log = logging.getLogger("factory")
MANIFEST_EVERY_S = 30  # how often the manifest is rewritten with the counts so far


@dataclass
class Scan:
    """What the pre-pass found, and what generation reads, skips and resumes."""

    paths: list[str]
    prepass: Prepass
    done: np.ndarray  # sample keys already in candidates/ (sorted)
    files_before: frozenset  # the candidates files before this run
    legacy: str | None = None  # the generator of candidates made before the generator column
    # A pre-pass on the driver only (a distributed one leaves them on the workers: engine/dist_resume):
    kept_ids: pa.Array | None = None  # ids of the rows that pass the early filters and deduplication (before the late filters)
    on_disk: pa.Table | None = None  # (id, sample, generator) of every candidate row before this run that is done for good
    on_disk_keys: np.ndarray | None = None  # the sample key of each of those rows

    def new_files(self, candidates_dir: str) -> list[str]:
        """The candidates files this run wrote. Files are named by their rows' keys, so a new file
        holds samples this run made."""
        return [p for p in files.list_files(candidates_dir, ".parquet") if p not in self.files_before]


def scan_input(job: Job, paths: list[str], dirs: dict, manifest: Manifest) -> Scan:
    """The pre-pass over the input and the resume checks on candidates/; writes nothing."""
    s = job.settings
    wall, counts = manifest.data["wall_seconds"], manifest.data["counts"]
    t = time.perf_counter()
    pre = run_prepass(paths, job.pipeline, float(job.config["resources"]["cpu_task_cpus"]), s.ray.local_scan_mb)
    wall["scan"] = round(time.perf_counter() - t, 3)
    counts["read"] = pre.n_read
    counts["samples_at_most"] = pre.n_kept * s.synth.repeat  # before the late filters
    log.info("read %d caption rows from %d file(s); %d duplicates", pre.n_read, len(paths), pre.n_duplicates())

    files_before = files.list_files(dirs["candidates"], ".parquet")
    legacy = manifest.data["legacy_generator"]
    scan = (resume_on_workers if pre.distributed else resume_on_driver)(job, paths, pre, files_before, legacy, dirs, counts)
    if len(scan.done):
        log.info("resuming: %d samples already in %s (%d of them for this run's captions)", len(scan.done), dirs["candidates"],
                 counts["resumed"])
    return scan


def refuse_changed(n: int, first: str, dirs: dict) -> None:
    if n:
        raise RunError(
            f"{n} caption(s) of the input differ from the captions their ids' samples in {dirs['candidates']} were made from "
            f"(first: id {first!r}): resuming would select old images for new captions; give changed captions new ids (or "
            "drop the id column), or use a new output="
        )


def resume_on_driver(job: Job, paths: list[str], pre: Prepass, files_before: list[str], legacy: str | None, dirs: dict,
                     counts: dict) -> Scan:
    """The resume checks with the kept rows and the candidates' keys on the driver (a pre-pass on the driver)."""
    done_table, made_from = candidate_keys(files_before, legacy)
    changed = changed_captions(pre.kept, made_from)
    refuse_changed(changed.num_rows, changed.column(S.ID)[0].as_py() if changed.num_rows else "", dirs)
    on_disk = sample_keys(done_table)
    kept_ids = pre.kept.column(S.ID).combine_chunks()
    # before the late filters
    counts["resumed"] = count_current(on_disk, done_table, kept_ids, job.settings.synth.repeat, job.pipeline.generator_names())
    return Scan(paths, pre, np.unique(on_disk), frozenset(files_before), legacy, kept_ids, done_table, on_disk)


def resume_on_workers(job: Job, paths: list[str], pre: Prepass, files_before: list[str], legacy: str | None, dirs: dict,
                      counts: dict) -> Scan:
    """The same checks as keyed joins on the workers (a distributed pre-pass: its kept rows stay there)."""
    checked = dist_resume.check(pre.kept, files_before, legacy, job.settings.synth.repeat, job.pipeline.generator_names(),
                                float(job.config["resources"]["cpu_task_cpus"]))
    refuse_changed(checked.changed, checked.changed_id, dirs)
    counts["resumed"] = checked.current  # before the late filters
    return Scan(paths, pre, checked.done, frozenset(files_before), legacy)


def generate(job: Job, scan: Scan, dirs: dict, manifest: Manifest, places: dict, still_ours: Callable[[], None]) -> dict:
    """Stream generation into candidates/, recording progress in `manifest`. `still_ours` raises
    once another run has taken the output over. Returns the busy seconds per stage, the samples
    that came out unusable, and Ray's operator figures."""
    counts = manifest.data["counts"]
    busy: dict[str, float] = {}
    unusable = 0
    last_save = time.perf_counter()
    progress = ProgressLog(counts["samples_at_most"] - counts["resumed"], float(job.settings.progress_every_s))
    gen = stream.generation_dataset(scan.paths, job.pipeline, dirs["losers"], scan.done, dirs, places)
    try:
        for summary in gen.iter_batches(batch_size=None, batch_format="numpy"):
            still_ours()
            progress.add(int(summary["rows"].sum()))  # progress.done: the samples generated so far
            unusable += int(summary["unusable"].sum())
            for key in summary:
                if key.startswith(S.BUSY):
                    busy[key[len(S.BUSY):]] = busy.get(key[len(S.BUSY):], 0.0) + float(summary[key].sum())
            if time.perf_counter() - last_save > MANIFEST_EVERY_S:
                counts["generated"] = progress.done
                manifest.data["progress"] = progress.figures()
                manifest.save()
                last_save = time.perf_counter()
    except BaseException:
        counts["generated"] = generated_so_far(progress.done, dirs, scan)
        raise
    counts["generated"] = progress.done
    manifest.data["progress"] = progress.figures()
    gpus = {g.stage.name: places[id(g.stage)].gpus for g in job.pipeline.generators}
    return {"busy": busy, "unusable": unusable, "operators": operator_stats(gen), "gpus": gpus}


def generated_so_far(driver_count: int, dirs: dict, scan: Scan) -> int:
    """What a stopped run made, also what the driver had not heard of yet (written by the pool, its
    summary still in flight): from the new files' footers alone, as `ray job stop` leaves 3 s."""
    try:
        new = scan.new_files(dirs["candidates"])
        return max(driver_count, files.parquet_dataset(new).count_rows() if new else 0)
    except Exception:  # noqa: BLE001 (the storage may be what failed): the driver's count stands
        return driver_count
