"""The one place that knows Ray: stages become Ray Data operators and actor pools here.

Stages themselves are plain classes (see factory/curate, synth, score, io); this module decides
where they run (tasks or actor pools, CPUs, GPUs, batch sizes) from the config's `resources`.
"""
from __future__ import annotations

import logging
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.curate.dedup import MarkRejected, dedup_keys
from factory.curate.rules import CaptionRules
from factory.expand import ExpandSamples
from factory.io.read import read_caption_file
from factory.io.write import CandidateWriter, RejectsSplit
from factory.score.scorer import ClipSsimScorer
from factory.select import AttachRank
from factory.synth.diffusion import DiffusionSynth

log = logging.getLogger(__name__)


def init_ray(ray_cfg: dict) -> None:
    """Join the cluster named by ray.address (or RAY_ADDRESS, as `ray job submit` sets), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"ignore_reinit_error": True, "log_to_driver": True}
    if ray_cfg.get("address"):
        kwargs["address"] = ray_cfg["address"]
    else:
        import os

        if not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = bool(ray_cfg.get("dashboard", False))
            if ray_cfg.get("num_cpus"):
                kwargs["num_cpus"] = ray_cfg["num_cpus"]
    ray.init(**kwargs)


def configure_data_context(ray_cfg: dict) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.target_max_block_size = int(ray_cfg.get("block_size_mb", 128) * 1024 * 1024)
    ctx.raise_original_map_exception = True  # the driver sees InputError, not a wrapper
    ctx.max_errored_blocks = 0  # a failed block fails the run: nothing is silently lost
    ctx.enable_progress_bars = bool(ray_cfg.get("progress_bars", True))
    ctx.enable_operator_progress_bars = bool(ray_cfg.get("progress_bars", True))
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.wait_for_min_actors_s = int(ray_cfg.get("wait_for_min_actors_s", 600))
    configure_fault_tolerance(ctx, ray_cfg)


# Lost nodes and pre-empted workers are system failures: Ray retries them without end, while a
# user error (a bad caption file, a bug) fails at once. These are Ray Data 2.60's own defaults
# (ActorPoolMapOperator._apply_default_remote_args: actors get max_restarts=-1 and
# max_task_retries=-1; data/_internal/remote_fn.cached_remote_fn: map tasks get max_retries=-1).
# Passing them to map_batches is deprecated in 2.60 (**ray_remote_args), so they are not passed;
# tests/test_fault_tolerance.py checks that the installed Ray still applies exactly these.
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": -1}
TASK_RETRIES = {"max_retries": -1}


def configure_fault_tolerance(ctx, ray_cfg: dict) -> None:
    """DataContext knobs for a run that must survive lost nodes but not hide its own errors."""
    ctx.actor_task_retry_on_errors = False  # user exceptions in a stage: no retry (OOM is handled inside)
    ctx.retried_map_errors = False
    # An actor whose node dies while it loads its model dies in its constructor; Ray Data's
    # default (0) would fail the run on the first such death. A broken model still fails fast.
    ctx.max_consecutive_actor_init_deaths = int(ray_cfg.get("max_actor_init_deaths", 3))


def _read_files(batch: pa.Table) -> Iterator[pa.Table]:
    for path, index in zip(batch.column("path").to_pylist(), batch.column("file_index").to_pylist()):
        yield read_caption_file(path, index)


def caption_rows(paths: list[str], cpu_per_task: float):
    """A dataset of caption rows (schema.CAPTION_ROW), one read task per input file."""
    import ray

    files_ds = ray.data.from_items([{"path": p, "file_index": i} for i, p in enumerate(paths)], override_num_blocks=len(paths))
    return files_ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow", num_cpus=cpu_per_task)


def scan_keys(paths: list[str], cpu_per_task: float) -> tuple[pa.Table, int]:
    """The pre-pass over the text: (id, pos, norm_hash) of every valid row, and the number of rows read."""
    import ray

    def keys(batch: pa.Table) -> pa.Table:
        k = dedup_keys(batch)
        return k.append_column("rows", pa.array([batch.num_rows] + [0] * (k.num_rows - 1), pa.int64())) if k.num_rows else pa.table(
            {S.ID: pa.array([None], pa.string()), S.POS: pa.array([-1], pa.int64()), "norm_hash": pa.array([0], pa.int64()), "rows": pa.array([batch.num_rows], pa.int64())}
        )

    refs = caption_rows(paths, cpu_per_task).map_batches(keys, batch_size=None, batch_format="pyarrow", num_cpus=cpu_per_task).to_arrow_refs()
    tables = [t for t in ray.get(refs) if t.num_rows]
    table = pa.concat_tables(tables) if tables else pa.table({S.ID: pa.array([], pa.string()), S.POS: pa.array([], pa.int64()), "norm_hash": pa.array([], pa.int64()), "rows": pa.array([], pa.int64())})
    n_read = int(pc.sum(table.column("rows")).as_py() or 0)
    table = table.filter(pc.greater_equal(table.column(S.POS), 0)).drop_columns(["rows"])
    return table, n_read


def _actor_pool(res: dict):
    from ray.data import ActorPoolStrategy

    lo = res.get("actors", 1)
    hi = res.get("max_actors") or lo
    if hi == lo:
        return ActorPoolStrategy(size=lo)
    return ActorPoolStrategy(min_size=lo, max_size=hi)


def gpus_for(res: dict, device: str, default: float) -> float:
    """GPUs per actor: explicit in config, else `default` when the stage's device is CUDA."""
    if res.get("num_gpus") is not None:
        return float(res["num_gpus"])
    return default if str(device).startswith("cuda") else 0.0


def generation_stream(
    paths: list[str],
    rejected: pa.Table,
    done,
    dirs: dict,
    cfg: dict,
):
    """read → rules → mark duplicates → rejects/ → expand → synthesize → score → candidates/.

    Yields one small summary row per written candidate file; everything streams.
    """
    res = cfg["resources"]
    cpu = res["cpu_task_cpus"]
    synth_cfg, model_cfg, score_cfg, scorer_cfg = cfg["synth"], cfg["model"], cfg["score"], cfg["scorer"]

    ds = caption_rows(paths, cpu)
    ds = ds.map_batches(CaptionRules(**cfg["curate"]["rules"]), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(MarkRejected(rejected), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(RejectsSplit(dirs["rejects"]), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    # Blocks of one synthesis batch: the unit that streams, and all a crash can cost.
    ds = ds.map_batches(
        ExpandSamples(synth_cfg["repeat"], synth_cfg["seed"], done),
        batch_size=max(1, synth_cfg["batch_size"] // synth_cfg["repeat"]),
        batch_format="pyarrow",
        num_cpus=cpu,
    )
    # One block per synthesis batch (a whole file's expanded rows would otherwise travel as one
    # block and reach the writer only when all of it is synthesized): what a crash can cost.
    ds = ds.repartition(target_num_rows_per_block=synth_cfg["batch_size"], strict=True)

    synth_kwargs = dict(
        path=model_cfg["path"],
        refiner_path=model_cfg.get("refiner_path"),
        high_noise_frac=model_cfg.get("high_noise_frac", 0.8),
        device=model_cfg["device"],
        dtype=model_cfg["dtype"],
        variant=model_cfg.get("variant"),
        height=model_cfg.get("height"),
        width=model_cfg.get("width"),
        steps=synth_cfg["steps"],
        guidance=synth_cfg["guidance"],
        negative_prompt=synth_cfg.get("negative_prompt", ""),
        channels_last=model_cfg.get("channels_last", False),
        fuse_qkv=model_cfg.get("fuse_qkv", False),
        compile=model_cfg.get("compile", False),
        torch_threads=res["synth"].get("torch_threads"),
    )
    ds = ds.map_batches(
        DiffusionSynth,
        fn_constructor_kwargs=synth_kwargs,
        compute=_actor_pool(res["synth"]),
        batch_size=synth_cfg["batch_size"],
        num_gpus=gpus_for(res["synth"], model_cfg["device"], 1.0),
        num_cpus=res["synth"]["num_cpus"],
        batch_format="numpy",
    )
    score_kwargs = dict(
        arch=scorer_cfg["arch"],
        pretrained=scorer_cfg.get("pretrained"),
        device=scorer_cfg["device"],
        dtype=scorer_cfg["dtype"],
        lam=score_cfg["lam"],
        prefix=score_cfg["prefix"],
        ssim_size=score_cfg["ssim_size"],
        ssim_low=score_cfg["ssim_low"],
        torch_threads=res["score"].get("torch_threads"),
    )
    ds = ds.map_batches(
        ClipSsimScorer,
        fn_constructor_kwargs=score_kwargs,
        compute=_actor_pool(res["score"]),
        batch_size=score_cfg["batch_size"],
        num_gpus=gpus_for(res["score"], scorer_cfg["device"], 0.25),
        num_cpus=res["score"]["num_cpus"],
        batch_format="numpy",
    )
    image = cfg["image"]
    ds = ds.map_batches(
        CandidateWriter(dirs["candidates"], image["format"], image.get("quality", 95)),
        batch_size=score_cfg["batch_size"],
        batch_format="numpy",
        num_cpus=cpu,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def write_selected(candidate_paths: list[str], chosen: pa.Table, staging_dir: str, cpu: float) -> int:
    """Filter candidates to the chosen (id, sample) pairs in parallel and write them with their rank."""
    import ray

    from factory.io import files
    from factory.io.write import keys_digest

    def write(batch: pa.Table) -> pa.Table:
        if batch.num_rows:
            batch = batch.cast(S.DATASET)
            name = f"part-{keys_digest(batch.column(S.ID).to_pylist(), batch.column(S.SAMPLE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(staging_dir, name), batch)
        return pa.table({"rows": [batch.num_rows]})

    ds = ray.data.read_parquet(candidate_paths, file_extensions=["parquet"])
    ds = ds.map_batches(AttachRank(chosen), batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(write, batch_size=None, batch_format="pyarrow", num_cpus=cpu)
    return sum(int(b["rows"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
