"""The retry knobs, resources from config and output resolution, checked without starting Ray."""
from __future__ import annotations

import os

import pytest

from factory import jobs
from factory.config import compose
from factory.engine import placement, ray_setup
from factory.errors import RunError
from factory.job import load_job


def planned(overrides: list[str], gpus: float = 0):
    """The job and the placement of its model stages (by pool), as a run makes them."""
    job = load_job(compose(overrides))
    stages = job.pipeline.model_stages()
    places = placement.plan(stages, job.config["resources"], gpus)
    return job, places, {s.pool: places[id(s)] for s in stages}


def cpu_check(overrides: list[str], cpus: float, local: bool) -> float:
    job, places, _ = planned(overrides)
    curation = [f for f in job.pipeline.late_filters() if f.engine() == "actors"]
    return placement.check_cpus(job.pipeline.stream_pools(), curation, places, cpus, local)


def test_ray_data_still_applies_the_retry_defaults_we_rely_on():
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator
    from ray.data._internal.remote_fn import cached_remote_fn

    actor_args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert {k: actor_args[k] for k in ray_setup.ACTOR_RETRIES} == ray_setup.ACTOR_RETRIES

    def task():  # a fresh function: cached_remote_fn caches by function
        return None

    options = cached_remote_fn(task)._default_options
    assert {k: options[k] for k in ray_setup.TASK_RETRIES} == ray_setup.TASK_RETRIES


def test_data_context_knobs_come_from_the_config():
    from ray.data import DataContext

    ray_setup.configure_data_context(load_job(compose(["ray.max_actor_init_deaths=7", "ray.block_size_mb=16"])).settings.ray)
    ctx = DataContext.get_current()
    assert ctx.max_consecutive_actor_init_deaths == 7
    assert ctx.target_max_block_size == 16 * 1024 * 1024
    assert ctx.actor_task_retry_on_errors is False and ctx.max_errored_blocks == 0


def test_gpu_preset_asks_for_gpus_whatever_the_driver_has():
    _, _, pools = planned(["cluster=gpu", "model=sdxl", "scorer=clip_l14_336"], gpus=0)
    assert pools["synth"].gpus == 0.75  # beside a 0.25 scorer on one GPU
    assert pools["score"].gpus == 0.25
    assert pools["synth"].cpus > 0 and pools["score"].cpus > 0  # explicit, never Ray's default
    assert pools["synth"].actors == (1, 16) and pools["score"].actors == (1, 8)
    assert planned(["resources.synth.actors=3"])[2]["synth"].actors == (3, 3)
    # The CPU default: no GPU asked when the device is the CPU and no count is given.
    assert planned([], gpus=1)[2]["synth"].gpus == 0.0


def test_pools_ask_for_the_memory_their_models_need():
    """Declared memory (issue: Ray requested 0 B for actors of about 1.5 GiB): the process, the weights, a batch."""
    _, _, pools = planned([])
    assert all(p.memory >= 2 * 2**30 for p in pools.values())
    _, _, sdxl = planned(["model=sdxl", "scorer=clip_l14_336"])
    assert sdxl["synth"].memory > 8 * 2**30 > sdxl["score"].memory  # SDXL's 7 GB of weights go through host memory
    assert planned(["resources.synth.memory_gb=3"])[2]["synth"].memory == 3 * 2**30


def test_relative_output_is_made_absolute_locally_and_refused_in_a_job(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(jobs.RAY_JOB_ENV, raising=False)
    assert jobs.resolve_output("runs/x") == os.path.join(str(tmp_path), "runs", "x")
    assert jobs.resolve_output("s3://bucket/run") == "s3://bucket/run"
    assert jobs.resolve_output("/data/run") == "/data/run"
    monkeypatch.setenv(jobs.RAY_JOB_ENV, "{}")
    assert jobs.resolve_output("gs://bucket/run") == "gs://bucket/run"
    with pytest.raises(ValueError, match="relative path.*URI"):
        jobs.resolve_output("runs/x")


def test_staging_left_by_a_killed_selection_is_removed(tmp_path):
    (tmp_path / ".dataset-staging-123").mkdir()
    (tmp_path / ".dataset-staging-123" / "part-a.parquet").write_bytes(b"half")
    (tmp_path / "candidates").mkdir()
    assert jobs.remove_stale_staging(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates"]


def test_pools_that_leave_no_whole_cpu_are_refused_on_a_local_ray_and_warned_of_on_a_cluster(caplog):
    """Ray Data's repartition task needs 1 CPU; with less free beside the pools the stream waits for ever."""
    more = ["resources.score.num_cpus=1.0"]
    with pytest.raises(RunError, match=r"the actor pools take 1\.5 of the 2 CPUs \(synth 0\.5, score 1\).*raise ray\.num_cpus"):
        cpu_check(more, 2, local=True)
    with caplog.at_level("WARNING"):
        assert cpu_check(more, 2, local=False) == 0.5
    assert "waits until the autoscaler adds CPUs" in caplog.text
    assert cpu_check([], 2, local=True) == 1.0  # the defaults fit 2 cores


def test_curation_pools_that_hold_back_synthesis_are_warned_of(caplog):
    """The perplexity and judge pools hold their CPUs until every caption has passed them: with less
    than one CPU left beside all pools, synthesis starts only after curation (a warning: the run ends)."""
    both = ["curate.llm.enabled=true", "curate.llm.model=m", "curate.perplexity.enabled=true", "curate.perplexity.model=m",
            "curate.perplexity.max=10"]
    assert [s.pool for s in load_job(compose(both)).pipeline.model_stages()] == ["perplexity", "judge", "synth", "score"]
    vllm = load_job(compose(["curate.llm.enabled=true", "curate.llm.model=m", "curate.llm.backend=vllm"]))
    assert [s.pool for s in vllm.pipeline.model_stages()] == ["synth", "score"]  # vLLM sizes its own engines
    with caplog.at_level("WARNING"):
        assert cpu_check(both, 2, local=True) == 1.0
    assert "the perplexity and judge pool(s) take 0.5 more CPUs, leaving 0.5 of 2" in caplog.text
    assert "raise ray.num_cpus to stream" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        cpu_check(both, 3, local=True)
    assert caplog.text == ""


def test_synthesis_waits_for_curation_pools_when_repartition_has_no_cpu(ray_local):
    """What the warning above says, through Ray Data itself: with 0.5 CPU left beside the pools, no row
    crosses the repartition step until the upstream pool has taken every row; with 1 it streams."""
    import ray

    from tests.crash_helpers import first_row_behind_repartition

    assert first_row_behind_repartition(ray, upstream_cpus=1.0, rows=400) == 400  # 2 − 0.5 − 0.5 − 1.0 = 0 free
    assert first_row_behind_repartition(ray, upstream_cpus=0.0, rows=400) < 400


def test_each_pool_actor_runs_torch_on_the_threads_its_stage_declares():
    """One torch thread per actor (the CPUs Ray reserves for it), the override wins: threads beyond
    the reserved CPUs spin against the node's other processes (two test workers with the generator
    on two threads: 220 s against 122 s on one)."""
    import torch

    from factory.engine.adapter import actor_class

    _, _, pools = planned([])
    assert (pools["synth"].threads, pools["score"].threads) == (1, 1)
    _, _, pools = planned(["resources.synth.torch_threads=2"])
    assert pools["synth"].threads == 2

    job = load_job(compose([]))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        actor_class(job.pipeline.generator.stage, 2)()  # what an actor of the pool runs first (the tiny model loads)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
