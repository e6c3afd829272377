"""A whole run: check the output folder, take its lock, join Ray, run the pre-pass, stream
generation, select, and leave a manifest that says how it ended."""
from __future__ import annotations

import logging
import time

from factory.curation import curate_locked, refuse_full_run
from factory.engine import logs, placement, ray_setup
from factory.errors import OutputInUseError, RunError, error_line
from factory.finish import finish
from factory.generate import generate, scan_input
from factory.io import files
from factory.io.read import list_inputs
from factory.io.redact import redact
from factory.job import Job
from factory.jobs import OutputLock, remove_stale_staging, resolve_output
from factory.layout import (
    Manifest,
    check_resume,
    fingerprint_to_record,
    read_manifest,
    run_dirs,
)
from factory.paths import SAMPLE_INPUT

log = logging.getLogger("factory")


def run(job: Job, curate_only: bool = False) -> dict:
    """Run the factory on a checked job (factory/job.py), or only its curation
    (`python -m factory curate`, factory/curation.py); returns the manifest."""
    t_start = time.perf_counter()
    s = job.settings
    if not s.output:
        raise RunError("no output given: pass output=PATH (a folder, local or a URI)")
    output = job.config["output"] = resolve_output(s.output)  # absolute: the manifest says where the data is
    job.config["input"] = s.input or SAMPLE_INPUT
    paths = list_inputs(job.config["input"], exclude=[output])  # not the run's own files, where output= lies inside input=
    dirs = run_dirs(output)
    if curate_only:
        refuse_full_run(dirs, output)
        previous = read_manifest(dirs["manifest"]) if files.exists(dirs["manifest"]) else None
    else:
        previous = check_resume(job.pipeline, dirs, output, s.resume.allow_config_change)
    lock = OutputLock(output)  # before anything in output= changes: one run at a time
    if taken := lock.acquire(s.resume.take_over):
        log.warning("%s was locked by a run on %s (pid %s) that %s; this run takes over", output, taken["host"], taken["pid"],
                    "may still run (resume.take_over=true)" if s.resume.take_over else "is gone")
    try:
        places = start_ray(job, curate_only)
        with logs.ray_data_to_file(output) as ray_data_log:
            nodes_checked = check_paths_shared(output, paths)
            lock.check()
            for d in ("candidates", "rejects"):
                files.remove_stale_temp(dirs[d])
            remove_stale_staging(output)  # a run killed while writing dataset/
            fingerprint = {} if curate_only else fingerprint_to_record(job.pipeline, previous)
            manifest = Manifest(dirs["manifest"], job.config, fingerprint, previous, guard=lambda: lock.check(fresh=True))
            manifest.data["nodes_sharing_paths"] = nodes_checked
            if ray_data_log:
                manifest.data["ray_data_log"] = ray_data_log
            body = curate_locked if curate_only else run_locked
            try:
                return body(job, paths, dirs, manifest, places, lock, t_start)
            except OutputInUseError:
                raise  # manifest.json is the other run's now
            except BaseException as exc:
                if manifest.started or previous is None:
                    record_stop(manifest, exc)
                raise
    finally:
        lock.release()


def start_ray(job: Job, curate_only: bool = False) -> dict:
    """Join or start Ray and place every stage on it; refuse pools that cannot stream on a local Ray."""
    s = job.settings
    ray_setup.init_ray(s.ray)
    ray_setup.configure_data_context(s.ray)
    curation = [f for f in job.pipeline.late_filters() if f.engine() == "actors"]
    stages = curation if curate_only else job.pipeline.model_stages()
    places = placement.plan(stages, job.config["resources"], ray_setup.cluster_gpus())
    places["tasks"] = placement.Placement(cpus=float(job.config["resources"]["cpu_task_cpus"]))
    stream = [] if curate_only else job.pipeline.stream_pools()
    placement.check_cpus(stream, curation, places, ray_setup.cluster_cpus(), ray_setup.is_local_ray(s.ray))
    return places


def run_locked(job: Job, paths: list[str], dirs: dict, manifest: Manifest, places: dict, lock, t_start: float) -> dict:
    """The run once the output is ours; candidates/ stays for a resume."""
    # The pre-pass and the resume checks change nothing in output=: a run refused here leaves a
    # finished run's manifest, rejects/ and dataset/ as they were.
    scan = scan_input(job, paths, dirs, manifest)
    # Rejects are re-derived from the whole input on every run, so the old ones go first, and
    # so do the side logs of the filters (the judge's verdicts).
    files.delete_dir(dirs["rejects"])
    files.delete_dir(dirs["llm_judge"])
    scan.prepass.save_losers(dirs["losers"])
    manifest.started = True
    manifest.save()
    t = time.perf_counter()
    generated = generate(job, scan, dirs, manifest, places, lock.check)
    manifest.data["wall_seconds"]["generate"] = round(time.perf_counter() - t, 3)
    return finish(job, scan, dirs, manifest, generated, t_start)


def record_stop(manifest: Manifest, exc: BaseException) -> None:
    """manifest.json says the run stopped (Ctrl-C, or SIGTERM: `ray job stop`, which ray.init turns
    into SystemExit(15)) or failed, and why."""
    stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
    what = {KeyboardInterrupt: "interrupted (Ctrl-C)", SystemExit: f"stopped by signal {exc}"}.get(
        type(exc), f"{type(exc).__name__}: {error_line(exc)}")
    manifest.data.update(status="stopped" if stopped else "failed", error=redact(what))
    try:
        manifest.save()
    except OutputInUseError:
        pass  # taken over meanwhile: manifest.json is the other run's now


def check_paths_shared(output: str, inputs: list[str]) -> int:
    """Refuse a multi-node run whose local output or input folder some node does not see: its
    files would land on (or be missing from) that node's own disk. Returns the nodes checked."""
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
        n_nodes, missing = ray_setup.nodes_without(probe)
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
