"""`python -m factory curate`: curation on its own. The pre-pass, then read → filters → duplicates →
model filters, writing curated/ (id, caption, source), rejects/ and a manifest with the counts a
full run records. A later run synthesizes from it: `python -m factory input=OUTPUT/curated …`."""
from __future__ import annotations

import logging
import time

from factory.counts import count_rejects
from factory.engine import stream
from factory.errors import RunError
from factory.io import files
from factory.job import Job
from factory.layout import Manifest
from factory.prepass import run_prepass
from factory.progress import ProgressLog

log = logging.getLogger("factory")


def refuse_full_run(dirs: dict, output: str) -> None:
    """Curation rewrites rejects/: not in the output of a full run (its selection reads them)."""
    if files.list_files(dirs["candidates"], ".parquet"):
        raise RunError(f"{output} holds a full run (candidates/): curate into a new output=, then synthesize with "
                       f"input={files.join(output, 'curated')}")


def curate_locked(job: Job, paths: list[str], dirs: dict, manifest: Manifest, places: dict, lock, t_start: float) -> dict:
    """Curation once the output is ours; curated/ and rejects/ are re-derived whole on every run."""
    s, counts, wall = job.settings, manifest.data["counts"], manifest.data["wall_seconds"]
    manifest.data["kind"] = "curate"
    t = time.perf_counter()
    pre = run_prepass(paths, job.pipeline, float(job.config["resources"]["cpu_task_cpus"]), s.ray.local_scan_mb)
    wall["scan"] = round(time.perf_counter() - t, 3)
    counts["read"] = pre.n_read
    log.info("read %d caption rows from %d file(s); %d duplicates", pre.n_read, len(paths), pre.n_duplicates())
    for part in ("rejects", "llm_judge", "curated"):
        files.delete_dir(dirs[part])
    pre.save_losers(dirs["losers"])
    manifest.started = True
    manifest.save()
    t = time.perf_counter()
    progress = ProgressLog(pre.n_kept, float(s.progress_every_s), what="captions")
    for summary in stream.curation_dataset(paths, job.pipeline, dirs["losers"], dirs, places).iter_batches(
            batch_size=None, batch_format="numpy"):
        lock.check()
        progress.add(int(summary["rows"].sum()))
    wall["curate"] = round(time.perf_counter() - t, 3)
    n_rejected, by_reason = count_rejects(dirs["rejects"])
    counts.update(rejected=n_rejected, rejected_by_reason=by_reason, curated=progress.done)
    for f in job.pipeline.late_filters():
        if (side := f.side_counts(dirs["output"])) is not None:
            counts[f.name] = side
    if progress.done != pre.n_read - n_rejected:
        raise RunError(f"curation read {pre.n_read} rows, rejected {n_rejected} and kept {progress.done}: the input changed "
                       "while it ran; run again")
    wall["total"] = round(time.perf_counter() - t_start, 3)
    manifest.data.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), curated=dirs["curated"])
    manifest.save()
    return manifest.data


def curate_summary(m: dict) -> list[str]:
    c = m["counts"]
    lines = [f"read {c['read']}  rejected {c['rejected']}  curated {c['curated']}"]
    if c.get("rejected_by_reason"):
        lines.append("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in c["rejected_by_reason"].items()))
    lines.append("wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["wall_seconds"].items()))
    lines.append(f"curated captions: {m['curated']} (synthesize with input={m['curated']})")
    return lines
