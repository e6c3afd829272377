"""After generation: the counts, selection into dataset/ (with its exports, through a staging
folder), the manifest's summary and the report."""
from __future__ import annotations

import logging
import os
import time

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.dataset import MaterializedDataset

from factory import schema as S
from factory.counts import (
    count_candidates,
    count_current,
    count_rejects,
    curation_rejected_ids,
)
from factory.engine import dist_counts, dist_resume, select_dist
from factory.engine.select import write_selected
from factory.errors import RunError
from factory.export import write_exports
from factory.generate import Scan
from factory.io import files
from factory.job import Job
from factory.layout import Manifest
from factory.report import report_after_run
from factory.select import current_samples, read_scores, select_top_k
from factory.stages import generator_summary, stage_summary

log = logging.getLogger("factory")


def on_workers(job: Job, scan: Scan, sizes: dict[str, int]) -> bool:
    """Whether the candidates are counted and selected on the workers, so that the driver never
    reads every candidate's row: after a distributed pre-pass (the curated ids stay on the workers),
    or where candidates/ (`sizes`: bytes per file) is above ray.local_select_mb."""
    return scan.prepass.distributed or sum(sizes.values()) > job.settings.ray.local_select_mb * 2**20


def record_counts(job: Job, scan: Scan, dirs: dict, sizes: dict[str, int], counts: dict) -> None:
    """Rejects and candidates counted from their files: the candidates on the workers where
    selection runs there (`on_workers`)."""
    n_rejected, by_reason = count_rejects(dirs["rejects"])
    if on_workers(job, scan, sizes):
        cands = dist_counts.count_candidates(list(sizes), scan.legacy, float(job.config["resources"]["cpu_task_cpus"]))
    else:
        cands = count_candidates(dirs["candidates"], scan.legacy)
    for f in job.pipeline.late_filters():
        if (side := f.side_counts(dirs["output"])) is not None:
            counts[f.name] = side
    counts.update(rejected=n_rejected, rejected_by_reason=by_reason, curated=scan.prepass.n_read - n_rejected,
                  synthesized=cands["rows"], scored=cands["usable"], unusable=cands["unusable"])
    counts["by_generator"] = cands["by_generator"]


def curated_ids(job: Job, scan: Scan, dirs: dict, counts: dict) -> pa.Array:
    """This run's curated captions (kept by the pre-pass, not rejected by a late filter), also
    written for the report; on the driver (a pre-pass on the driver)."""
    repeat, generators = job.settings.synth.repeat, job.pipeline.generator_names()
    kept = scan.kept_ids
    curated = pc.filter(kept, pc.invert(pc.is_in(kept, value_set=curation_rejected_ids(dirs["rejects"], job.pipeline.curation_reasons()))))
    if len(curated) < len(kept):  # a late filter rejected some: their samples on disk no longer count
        counts["resumed"] = count_current(scan.on_disk_keys, scan.on_disk, curated, repeat, generators)
    # What competes, for the report: candidates of other captions stay on disk (and come back if they do).
    files.delete_dir(dirs["curated_ids"])  # (a folder: written by the workers after a distributed pre-pass)
    files.write_parquet_atomic(dirs["curated_ids"], pa.table({S.ID: curated}))
    return curated


def curated_on_workers(job: Job, scan: Scan, dirs: dict, counts: dict) -> MaterializedDataset:
    """curated_ids after a distributed pre-pass: the ids stay in the object store, written to
    curated_ids by the workers (engine/dist_resume)."""
    pre, reasons = scan.prepass, job.pipeline.curation_reasons()
    curated = dist_resume.curated(pre.kept, dirs["rejects"], reasons, dirs["curated_ids"])
    if curated.count() < pre.n_kept:  # a late filter rejected some: their samples on disk no longer count
        counts["resumed"] = dist_resume.current(curated, sorted(scan.files_before), scan.legacy, job.settings.synth.repeat,
                                                job.pipeline.generator_names(), float(job.config["resources"]["cpu_task_cpus"]))
    return curated


def warn_not_competing(counts: dict, dirs: dict) -> None:
    if counts["not_competing"]:
        log.warning("%d candidates in %s do not compete: their caption is no longer curated (the input or the curation "
                    "changed since they were made), their sample index is beyond synth.repeat or their generator is not in "
                    "this run", counts["not_competing"], dirs["candidates"])


def competing(job: Job, scan: Scan, dirs: dict, candidate_paths: list[str], counts: dict) -> pa.Table:
    """The score rows (their `file` indexing `candidate_paths`) that compete: this run's curated captions at this synth.repeat. Candidates made
    before the input, the curation or synth.repeat changed stay on disk but are not selected, so a
    resumed run selects what a fresh run with today's settings would."""
    curated = curated_ids(job, scan, dirs, counts)
    repeat, generators = job.settings.synth.repeat, job.pipeline.generator_names()
    scores, counts["not_competing"] = current_samples(read_scores(candidate_paths, scan.legacy), curated, repeat, generators)
    warn_not_competing(counts, dirs)
    return scores


def select(job: Job, scan: Scan, dirs: dict, sizes: dict[str, int], counts: dict) -> tuple[pa.Table, float | None, int]:
    """select_top_k of the competing score rows: on the driver for candidates/ up to
    ray.local_select_mb, else as a distributed reduce whose score rows never reach the driver
    (engine/select_dist: the same rows, ties included). After a distributed pre-pass, always the
    latter, with the curated ids joined to the score rows on the workers."""
    s, cpu = job.settings, float(job.config["resources"]["cpu_task_cpus"])
    if not on_workers(job, scan, sizes):
        return select_top_k(competing(job, scan, dirs, list(sizes), counts), s.select.k, s.select.fraction, s.select.best_by)
    if scan.prepass.distributed:  # the curated ids stay on the workers: joined to the score rows there
        curated = curated_on_workers(job, scan, dirs, counts)
        rows, counts["not_competing"] = select_dist.competing_by_join(list(sizes), curated, s.synth.repeat,
                                                                      job.pipeline.generator_names(), cpu, scan.legacy)
    else:
        curated = curated_ids(job, scan, dirs, counts)
        which = select_dist.Competing.of(curated, s.synth.repeat, tuple(job.pipeline.generator_names()))
        rows, counts["not_competing"] = select_dist.competing_scores(list(sizes), which, cpu, scan.legacy)
    warn_not_competing(counts, dirs)
    return select_dist.select_top_k_distributed(rows, s.select.k, s.select.fraction, s.select.best_by)


def select_into_dataset(job: Job, scan: Scan, dirs: dict, sizes: dict[str, int], manifest: Manifest) -> pa.Table:
    """Selection, written to a staging folder with the exports, then moved to dataset/ whole."""
    s, counts, wall = job.settings, manifest.data["counts"], manifest.data["wall_seconds"]
    t = time.perf_counter()
    chosen, threshold, n_competing = select(job, scan, dirs, sizes, counts)
    staging = files.join(dirs["output"], f".dataset-staging-{os.getpid()}")
    files.delete_dir(staging)
    row_bytes = sum(sizes.values()) / max(1, counts["synthesized"])
    n_selected = write_selected(list(sizes), chosen, staging, float(job.config["resources"]["cpu_task_cpus"]),
                                s.ray.local_select_mb, sizes=sizes, row_bytes=row_bytes, legacy=scan.legacy) if chosen.num_rows else 0
    if n_selected != chosen.num_rows:
        raise RunError(f"selection chose {chosen.num_rows} pairs but {n_selected} were written: a candidates file changed or "
                       "vanished during selection; run again to resume")
    if chosen.num_rows and s.export.any():  # into the staging folder: dataset/ appears with them complete or not at all
        t_export = time.perf_counter()
        manifest.data["exports"] = write_exports(staging, s.export, dict(counts, selected=n_selected), job.config)
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
    manifest.data["selection"] = selection_summary(chosen, threshold, n_competing)
    return chosen


def selection_summary(chosen: pa.Table, threshold: float | None, n_competing: int) -> dict:
    def mean(col):
        return round(pc.mean(chosen.column(col)).as_py(), 6) if chosen.num_rows else None

    return {"k": chosen.num_rows, "competing_captions": n_competing, "threshold": threshold,
            "mean_clip_score": mean(S.CLIP_SCORE), "mean_ssim": mean(S.SSIM), "mean_score": mean(S.SCORE)}


def made_this_run(dirs: dict, scan: Scan) -> dict[str, int]:
    """Samples per generator in the candidates files this run wrote."""
    new = scan.new_files(dirs["candidates"])
    if not new:
        return {}
    return {str(g): n for g, n in files.count_values(new, S.GENERATOR).items()}


def finish(job: Job, scan: Scan, dirs: dict, manifest: Manifest, generated: dict, t_start: float) -> dict:
    """Counts, selection, the stage summary, status complete, and the report; returns the manifest."""
    data, wall = manifest.data, manifest.data["wall_seconds"]
    sizes = files.file_sizes(dirs["candidates"], ".parquet")  # listed once: nothing writes candidates/ from here on
    record_counts(job, scan, dirs, sizes, data["counts"])
    manifest.guard()  # a fresh look at the lock: the next steps replace the run's outputs
    chosen = select_into_dataset(job, scan, dirs, sizes, manifest)
    wall["total"] = round(time.perf_counter() - t_start, 3)
    data["busy_seconds"] = {k: round(v, 3) for k, v in generated["busy"].items()}
    data["ray_operators"] = generated["operators"]
    data["stages"] = stage_summary(data, job.pipeline, generated["operators"], generated["unusable"])
    data["generators"] = job.pipeline.generator_names()
    data["by_generator"] = generator_summary(job.pipeline, data, generated, made_this_run(dirs, scan), chosen)
    data.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    manifest.save()
    if job.settings.report.enabled:
        t = time.perf_counter()
        data["report"] = report_after_run(dirs["output"])
        wall["report"] = round(time.perf_counter() - t, 3)
        wall["total"] = round(time.perf_counter() - t_start, 3)
        manifest.save()
    return data
