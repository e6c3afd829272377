"""Start or join Ray, and the DataContext settings every run uses."""
from __future__ import annotations

import logging
import os

import ray
from ray.data import DataContext
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from factory.engine.logs import has_terminal
from factory.engine.shuffle import ONE_WORKER_POOL
from factory.settings import RaySettings

log = logging.getLogger(__name__)


def is_local_ray(settings: RaySettings) -> bool:
    """Whether init_ray starts a Ray of its own (no cluster to grow)."""
    return settings.address == "local" or not (settings.address or os.environ.get("RAY_ADDRESS"))


def init_ray(settings: RaySettings) -> None:
    """Join the cluster named by ray.address (or RAY_ADDRESS, as `ray job submit` sets), else start a local one."""
    if ray.is_initialized():
        return
    # Workers' own output (model loading bars, library warnings) reaches the console only with a
    # terminal (ray.worker_logs=null); it stays in Ray's session logs either way.
    worker_logs = has_terminal() if settings.worker_logs is None else settings.worker_logs
    kwargs = {"ignore_reinit_error": True, "log_to_driver": bool(worker_logs)}
    if is_local_ray(settings):
        # A fresh local Ray, never a cluster that happens to run on this machine
        # (`ray.address=auto` joins that one on purpose).
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = bool(settings.dashboard)
        if settings.num_cpus:
            kwargs["num_cpus"] = settings.num_cpus
        # The distributed pre-pass and selection shuffle: one worker pool for map and reduce tasks
        # on a small node (see engine/shuffle.ONE_WORKER_POOL). A cluster's job sets its own.
        kwargs["runtime_env"] = {"env_vars": dict(ONE_WORKER_POOL)}
    elif settings.address:
        kwargs["address"] = settings.address
    ray.init(**kwargs)


def stop_ray() -> None:
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 (stopping anyway)
        pass


def cluster_cpus() -> float:
    return ray.cluster_resources().get("CPU", 0)


def cluster_gpus() -> float:
    return ray.cluster_resources().get("GPU", 0)


def configure_data_context(settings: RaySettings) -> None:
    ctx = DataContext.get_current()
    ctx.target_max_block_size = int(settings.block_size_mb * 1024 * 1024)
    ctx.raise_original_map_exception = True  # the driver sees InputError, not a wrapper
    ctx.max_errored_blocks = 0  # a failed block fails the run: nothing is silently lost
    ctx.enable_progress_bars = bool(settings.progress_bars)
    ctx.enable_operator_progress_bars = bool(settings.progress_bars)
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # 0: Ray Data starts the actor pools asynchronously. A positive value makes it block, pool by
    # pool, before the first read task runs: on a laptop that alone cost 16 s of a 120 s benchmark.
    ctx.wait_for_min_actors_s = int(settings.wait_for_min_actors_s)
    configure_fault_tolerance(ctx, settings)


# Lost nodes and pre-empted workers are system failures: Ray retries them without end, while a
# user error (a bad caption file, a bug) fails at once. These are Ray Data 2.60's own defaults
# (ActorPoolMapOperator._apply_default_remote_args: actors get max_restarts=-1 and
# max_task_retries=-1; data/_internal/remote_fn.cached_remote_fn: map tasks get max_retries=-1).
# Passing them to map_batches is deprecated in 2.60 (**ray_remote_args), so they are not passed;
# tests/test_fault_tolerance.py checks that the installed Ray still applies exactly these.
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": -1}
TASK_RETRIES = {"max_retries": -1}


def configure_fault_tolerance(ctx, settings: RaySettings) -> None:
    """DataContext knobs for a run that must survive lost nodes but not hide its own errors."""
    ctx.actor_task_retry_on_errors = False  # user exceptions in a stage: no retry (OOM is handled inside)
    ctx.retried_map_errors = False
    # An actor whose node dies while it loads its model dies in its constructor; Ray Data's
    # default (0) would fail the run on the first such death. A broken model still fails fast.
    ctx.max_consecutive_actor_init_deaths = int(settings.max_actor_init_deaths)


def _exists_here(paths: list[str]) -> list[bool]:
    return [os.path.exists(p) for p in paths]


def nodes_without(paths: list[str], timeout_s: float = 300) -> tuple[int, dict[str, list[str]]]:
    """How many alive Ray nodes there are, and for each local path the nodes (by address) that do
    not see it: one zero-CPU task pinned to every node. With a single node nothing runs."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return len(nodes), {}
    probe = ray.remote(num_cpus=0, max_retries=1)(_exists_here)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths) for n in nodes]
    seen = ray.get(refs, timeout=timeout_s)
    missing = {p: [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok[i]] for i, p in enumerate(paths)}
    return len(nodes), {p: m for p, m in missing.items() if m}
