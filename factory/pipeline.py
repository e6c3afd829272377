"""The one place that knows Ray: stages become Ray Data operators and actor pools here.

Stages themselves are plain classes (see factory/curate, synth, score, io); this module decides
where they run (tasks or actor pools, CPUs, GPUs, batch sizes) from the config's `resources`.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.curate.dedup import MarkRejected
from factory.curate.near_dup import search_keys
from factory.curate.rules import CaptionRules
from factory.expand import ExpandSamples
from factory.io.read import InputError, read_caption_file
from factory.io.write import CandidateWriter, RejectsSplit
from factory.score.scorer import ClipSsimScorer
from factory.select import PickSelected
from factory.stage_args import judge_kwargs, perplexity_kwargs, score_kwargs, synth_kwargs
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
            # A fresh local Ray, never a cluster that happens to run on this machine
            # (`ray.address=auto` joins that one on purpose).
            kwargs["address"] = "local"
            kwargs["include_dashboard"] = bool(ray_cfg.get("dashboard", False))
            if ray_cfg.get("num_cpus"):
                kwargs["num_cpus"] = ray_cfg["num_cpus"]
    ray.init(**kwargs)


def _exists_here(paths: list[str]) -> list[bool]:
    import os

    return [os.path.exists(p) for p in paths]


def nodes_without(paths: list[str], timeout_s: float = 300) -> tuple[int, dict[str, list[str]]]:
    """How many alive Ray nodes there are, and for each local path the nodes (by address) that do
    not see it: one zero-CPU task pinned to every node. With a single node nothing runs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return len(nodes), {}
    probe = ray.remote(num_cpus=0, max_retries=1)(_exists_here)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths) for n in nodes]
    seen = ray.get(refs, timeout=timeout_s)
    missing = {p: [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok[i]] for i, p in enumerate(paths)}
    return len(nodes), {p: m for p, m in missing.items() if m}


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
    # 0: Ray Data starts the actor pools asynchronously. A positive value makes it block, pool by
    # pool, before the first read task runs: on a laptop that alone cost 16 s of a 120 s benchmark.
    ctx.wait_for_min_actors_s = int(ray_cfg.get("wait_for_min_actors_s", 0))
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


# Seconds to wait before each new try at a file that the pre-pass read but the generation pass
# cannot (an object store's hiccup, say).
REREAD_WAIT_S = (2.0, 10.0)


def _read_files(batch: pa.Table, again: bool = False) -> Iterator[pa.Table]:
    """Caption rows of each file in `batch`. In the pre-pass (`again` false) an unreadable file
    becomes one row that the driver reports in one line. The generation pass (`again`) reads files
    the pre-pass could read: there a failure must stop the run (to be resumed), since a row would
    silently drop every caption of the file; it is tried again first."""
    for path, index in zip(batch.column("path").to_pylist(), batch.column("file_index").to_pylist()):
        for wait in (*REREAD_WAIT_S, None) if again else (None,):
            try:
                yield read_caption_file(path, index)
                break
            except InputError as e:
                if not again:
                    yield pa.Table.from_pylist(
                        [{S.SOURCE: path, S.POS: index << 32, S.RAW: "", S.REASON: S.R_UNREADABLE, S.DETAIL: str(e)}], schema=S.CAPTION_ROW
                    )
                elif wait is None:
                    raise InputError(f"{e} (the pre-pass of this run read it; the run stops here, and running it again resumes)") from e
                else:
                    log.warning("%s: reading again in %.0f s", e, wait)
                    time.sleep(wait)


def caption_rows(paths: list[str], cpu_per_task: float, again: bool = False):
    """A dataset of caption rows (schema.CAPTION_ROW), one read task per input file (`again`: see _read_files)."""
    import ray

    files_ds = ray.data.from_items([{"path": p, "file_index": i} for i, p in enumerate(paths)], override_num_blocks=len(paths))
    return files_ds.map_batches(functools.partial(_read_files, again=again), batch_size=1, batch_format="pyarrow", num_cpus=cpu_per_task)


def _scan_batch(batch: pa.Table, minhash: tuple[int, int] | None = None, rules: CaptionRules | None = None) -> pa.Table:
    """Per block: dedup keys of the valid rows (with MinHash signatures when `minhash` is
    (num_perm, shingle_size)), the row count, and any unreadable-file message.

    With `rules`, rows that fail them are not valid here: a caption the rules will reject must not
    win a duplicate group and take a good duplicate down with it.
    """
    if rules is not None:
        batch = rules(batch)
    keys = search_keys(batch, minhash)
    unreadable = batch.filter(pc.equal(batch.column(S.REASON), S.R_UNREADABLE)).column(S.DETAIL).to_pylist()
    # One row per block, the keys packed as Arrow IPC: blocks of any size travel as one value.
    return pa.table({"ipc": [_to_ipc(keys)], "rows": [batch.num_rows - len(unreadable)], "error": [unreadable[0] if unreadable else None]})


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def input_bytes(paths: list[str]) -> int:
    from factory.io import files

    return sum(files.size(p) for p in paths)


def scan_keys(
    paths: list[str], cpu_per_task: float, local_max_mb: float = 0, minhash: tuple[int, int] | None = None,
    rules: dict | None = None,
) -> tuple[pa.Table, int]:
    """The pre-pass over the text: (id, pos, norm_hash) of every valid row, and the number of rows read.

    With `minhash` = (num_perm, shingle_size) the rows also carry their MinHash signature for the
    near-duplicate search: one read of the input serves both. With `rules` (the curate.rules block)
    only captions that pass them get keys. Inputs up to `local_max_mb` are scanned
    in this process: launching Ray tasks would cost more than reading them. Raises InputError for
    the first unreadable file, before anything is generated.
    """
    scan = functools.partial(_scan_batch, minhash=minhash, rules=CaptionRules(**rules) if rules else None)
    if input_bytes(paths) <= local_max_mb * 2**20:
        blocks = (scan(t) for t in _read_files(pa.table({"path": paths, "file_index": list(range(len(paths)))})))
    else:
        ds = caption_rows(paths, cpu_per_task).map_batches(scan, batch_size=None, batch_format="pyarrow", num_cpus=cpu_per_task)
        blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    parts, n_read = [], 0
    for block in blocks:
        for ipc, rows, error in zip(*(block.column(c).to_pylist() for c in ("ipc", "rows", "error"))):
            if error:
                raise InputError(error)
            n_read += rows
            parts.append(pa.ipc.open_stream(ipc).read_all())
    parts = [p for p in parts if p.num_rows]
    if not parts:  # an empty table of the same columns
        parts = [pa.ipc.open_stream(scan(S.CAPTION_ROW.empty_table()).column("ipc")[0].as_py()).read_all()]
    return pa.concat_tables(parts), n_read


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


# GPUs per actor when resources.<stage>.num_gpus is null and the stage's device is CUDA ...
DEFAULT_GPUS = {"perplexity": 0.5, "judge": 1.0, "synth": 1.0, "score": 0.25}
# ... and, where the cluster has fewer GPUs than those ask for (a one-GPU machine), what the stages
# beside synthesis ask for; synthesis takes what is left of one GPU.
SHARED_GPUS = {"perplexity": 0.1, "judge": 0.1, "score": 0.25}


def gpu_devices(cfg: dict) -> dict[str, str]:
    """The device of each enabled stage that could ask for GPUs (the vllm judge sizes its own engines)."""
    cur = cfg["curate"]
    ppl, llm = cur["rules"].get("perplexity") or {}, cur.get("llm") or {}
    devices = {"synth": synth_kwargs(cfg)["device"], "score": score_kwargs(cfg)["device"]}
    if ppl.get("enabled"):
        devices["perplexity"] = perplexity_kwargs(cfg)["device"]
    if llm.get("enabled") and llm.get("backend", "hf") == "hf":
        devices["judge"] = judge_kwargs(cfg)["device"]
    return devices


def stage_gpus(res: dict, devices: dict[str, str], cluster_gpus: float) -> dict[str, float]:
    """GPUs per actor of each stage in `devices` (all of them stream at once, so their pools must
    fit the cluster together).

    Defaults: DEFAULT_GPUS. When the cluster has fewer GPUs than the minimal pools ask for (a
    one-GPU machine), defaulted stages take SHARED_GPUS and defaulted synthesis actors one GPU
    minus all of those, so everything fits beside a synthesis actor instead of some pool waiting
    for a GPU that will never come. Explicit `num_gpus` values are never changed; `cluster_gpus` of
    0 (an autoscaler yet to add GPU nodes) changes nothing either.
    """
    conf = {stage: res.get(stage) or {} for stage in devices}
    actors = {stage: int(conf[stage].get("actors", 1)) for stage in devices}
    shares = {stage: gpus_for(conf[stage], dev, DEFAULT_GPUS[stage]) for stage, dev in devices.items()}

    def asked() -> float:
        return sum(actors[s] * shares[s] for s in shares)

    if not 0 < cluster_gpus < asked():
        return shares
    defaulted = [s for s in shares if conf[s].get("num_gpus") is None and shares[s] > 0]
    for stage in defaulted:
        if stage != "synth":
            shares[stage] = SHARED_GPUS[stage]
    if "synth" in defaulted:
        beside = sum(actors[s] * shares[s] for s in shares if s != "synth")
        if beside < 1:
            shares["synth"] = round(1.0 - beside, 6)
    if asked() > cluster_gpus:
        log.warning("the GPU stages ask for %g GPUs at their smallest pool sizes (%s) and the cluster has %g now: they wait for "
                    "the autoscaler to add GPUs; on a fixed cluster, lower resources.*.actors or set resources.*.num_gpus",
                    asked(), ", ".join(f"{s} {actors[s]}×{shares[s]:g}" for s in shares if shares[s]), cluster_gpus)
    else:
        log.info("%g GPU(s) shared by the GPU stages: %s per actor", cluster_gpus, ", ".join(f"{s} {shares[s]:g}" for s in shares if shares[s]))
    return shares


def _pool_cpus(res: dict, stages, default: float) -> dict[str, float]:
    return {s: int((res.get(s) or {}).get("actors", 1)) * float((res.get(s) or {}).get("num_cpus", default) or 0) for s in stages}


def check_cpus(res: dict, stages, cluster_cpus: float, local: bool, curation: tuple = ()) -> float:
    """CPUs left beside the synthesis and scoring pools (which hold theirs for the whole stream) at
    their smallest sizes; refuse (local Ray) or warn when under 1. Ray Data's repartition step in
    front of them takes a whole CPU per task and offers no setting to ask for less, so without one
    whole CPU free the stream stops and the run waits for ever.

    `curation`: the model curation pools in use (perplexity, judge). They hold their CPUs until
    every caption has passed them, so with them under 1 CPU is left only later: synthesis then
    starts once curation has finished every caption (measured: nothing crossed the repartition
    until the upstream pools were done). A warning, since the run still ends.
    """
    from factory.run import RunError

    pools = _pool_cpus(res, stages, 0)
    free = cluster_cpus - sum(pools.values())
    if free < 1:
        what = (f"the actor pools take {sum(pools.values()):g} of the {cluster_cpus:g} CPUs ("
                + ", ".join(f"{s} {v:g}" for s, v in pools.items() if v) + "), and Ray Data's repartition step needs one whole CPU")
        if local:
            raise RunError(f"{what}: lower resources.*.num_cpus or resources.*.actors, or raise ray.num_cpus")
        log.warning("%s: the run waits until the autoscaler adds CPUs", what)
        return free
    more = _pool_cpus(res, curation, 1)  # the stages pass num_cpus=r.get("num_cpus", 1)
    if more and free - sum(more.values()) < 1:
        log.warning("the %s pool(s) take %g more CPUs, leaving %g of %g beside all pools: synthesis starts only once they have "
                    "curated every caption, as Ray Data's repartition step in front of it needs one whole CPU; lower "
                    "resources.*.num_cpus or raise %s to stream", " and ".join(more), sum(more.values()),
                    free - sum(more.values()), cluster_cpus, "ray.num_cpus" if local else "the cluster's CPUs")
    return free


def check_pool_cpus(cfg: dict) -> float:
    """check_cpus for this run's pools on the Ray it joined."""
    import ray

    return check_cpus(cfg["resources"], ("synth", "score"), ray.cluster_resources().get("CPU", 0), is_local_ray(cfg["ray"]),
                      curation=curation_pools(cfg))


def is_local_ray(ray_cfg: dict) -> bool:
    """Whether init_ray starts a Ray of its own (no cluster to grow)."""
    import os

    return not ray_cfg.get("address") and not os.environ.get("RAY_ADDRESS")


def generation_dataset(paths: list[str], rejected: pa.Table, done, dirs: dict, cfg: dict):
    """read → rules → mark duplicates → rejects/ → expand → synthesize → score → candidates/.

    A lazy dataset of one small summary row per written candidate file; everything streams.
    """
    res = cfg["resources"]
    cpu = res["cpu_task_cpus"]
    synth_cfg, score_cfg = cfg["synth"], cfg["score"]

    ds = caption_rows(paths, cpu, again=True)
    ds = ds.map_batches(CaptionRules(**cfg["curate"]["rules"]), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(MarkRejected(rejected), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    import ray

    gpus = stage_gpus(res, gpu_devices(cfg), ray.cluster_resources().get("GPU", 0))
    ds = curation_model_stages(ds, cfg, dirs, gpus)
    ds = ds.map_batches(RejectsSplit(dirs["rejects"]), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    ds = ds.map_batches(ExpandSamples(synth_cfg["repeat"], synth_cfg["seed"], done), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    # One block per synthesis batch: the unit that streams to the GPUs, and all a crash can cost.
    # (Fused CPU stages coalesce their small outputs into one big block otherwise, which would
    # reach the writer only once all of it is synthesized.)
    ds = ds.repartition(target_num_rows_per_block=synth_cfg["batch_size"], strict=True)

    ds = ds.map_batches(
        DiffusionSynth,
        fn_constructor_kwargs=synth_kwargs(cfg),
        compute=_actor_pool(res["synth"]),
        batch_size=synth_cfg["batch_size"],
        num_gpus=gpus["synth"],
        num_cpus=res["synth"]["num_cpus"],
        batch_format="numpy",
    )
    ds = ds.map_batches(
        ClipSsimScorer,
        fn_constructor_kwargs=score_kwargs(cfg),
        compute=_actor_pool(res["score"]),
        batch_size=score_cfg["batch_size"],
        num_gpus=gpus["score"],
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
    return ds


def operator_stats(ds) -> list[dict]:
    """Ray Data's figures per operator of an executed dataset: rows in and out, span and task seconds."""
    try:
        summary = ds.get_stats_summary()
    except Exception as e:  # a DeveloperAPI: a run must not fail over its statistics
        log.warning("no Ray Data statistics: %s", e)
        return []
    ops, todo = [], [summary]
    while todo:
        s = todo.pop()
        for op in s.operators_stats:
            start, end = op.earliest_start_time, op.latest_end_time
            ops.append({
                "operator": op.operator_name,
                "rows_in": op.total_input_num_rows,
                "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else None,
                "span_s": round(end - start, 3) if start is not None and end is not None else None,
                "task_s": round(op.wall_time.sum, 3) if op.wall_time else None,
                "start": start,
            })
        todo.extend(s.parents)
    ops.sort(key=lambda o: (o["start"] is None, o["start"] or 0))
    for o in ops:
        o.pop("start")
    return ops


# Rows per dataset file: about this many bytes of candidates, however few rows each candidates file gives.
DATASET_PART_MB = 256


def write_selected(candidate_paths: list[str], chosen: pa.Table, staging_dir: str, cpu: float, local_max_mb: float = 0,
                   sizes: dict[str, int] | None = None, row_bytes: float | None = None) -> int:
    """Copy the chosen rows (`chosen[file]` indexes `candidate_paths`) with their rank into
    `staging_dir`, reading only the files that hold them; groups of files make one dataset file of
    about DATASET_PART_MB (at `row_bytes` a row; unknown: a whole file's bytes a row, so parts stay
    small). In Ray tasks, or in this process when those files hold at most `local_max_mb` (tasks
    would cost more). `sizes`: bytes per path where known (one listing instead of a request each)."""
    import pyarrow.parquet as pq

    from factory.io import files
    from factory.io.write import keys_digest

    files.makedirs(staging_dir)  # here on the driver; the tasks only write into it
    if chosen.num_rows == 0:
        return 0
    pick = PickSelected(chosen)
    file_ids, n_chosen = pick.files()
    if sizes is None:
        sizes = {candidate_paths[i]: files.size(candidate_paths[i]) for i in file_ids}
    if row_bytes is None:
        row_bytes = max((sizes.get(candidate_paths[i], 0) for i in file_ids), default=0)
    groups = part_groups(n_chosen, row_bytes, DATASET_PART_MB * 2**20)

    def write(batch: pa.Table) -> pa.Table:
        parts = []
        for i in batch.column("files").to_pylist()[0]:
            fs, path = files.resolve(candidate_paths[i])
            parts.append(pick(i, pq.read_table(path, filesystem=fs, partitioning=None)))
        out = pa.concat_tables(parts).cast(S.DATASET) if parts else S.DATASET.empty_table()
        if out.num_rows:
            name = f"part-{keys_digest(out.column(S.ID).to_pylist(), out.column(S.SAMPLE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(staging_dir, name), out, make_parent=False)
        return pa.table({"rows": [out.num_rows]})

    items = [{"files": [int(file_ids[i]) for i in g]} for g in groups]
    if sum(sizes.get(candidate_paths[i], 0) for i in file_ids) <= local_max_mb * 2**20:
        return sum(write(pa.Table.from_pylist([item])).column("rows")[0].as_py() for item in items)
    import ray

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(write, batch_size=1, batch_format="pyarrow", num_cpus=cpu)
    return sum(int(b["rows"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


def part_groups(chosen_rows, row_bytes: float, part_bytes: float) -> list[list[int]]:
    """Consecutive runs of files (positions in `chosen_rows`, each file's number of chosen rows)
    whose chosen rows, at `row_bytes` each, come to about `part_bytes`; at least one file a run."""
    groups, current, acc = [], [], 0.0
    for pos, n in enumerate(chosen_rows):
        current.append(pos)
        acc += float(n) * row_bytes
        if acc >= part_bytes:
            groups.append(current)
            current, acc = [], 0.0
    if current:
        groups.append(current)
    return groups


# ---- curation: the model stages (docs/curation.md) ----


def curation_pools(cfg: dict) -> tuple[str, ...]:
    """The resources.* keys of the model curation actor pools this config runs (vllm's engine is sized apart)."""
    curate = cfg["curate"]
    llm = curate.get("llm") or {}
    return (("perplexity",) if (curate["rules"].get("perplexity") or {}).get("enabled") else ()) + (
        ("judge",) if llm.get("enabled") and llm.get("backend", "hf") == "hf" else ())


def curation_model_stages(ds, cfg: dict, dirs: dict, gpus: dict[str, float]):
    """The optional model-based curation: perplexity filter, then the LLM judge (and its verdict log).
    `gpus`: GPUs per actor of each stage (stage_gpus).

    Rows rejected so far go to rejects/ first, so the models spend time on live captions only.
    """
    from factory.curate.judge import HFJudge, VerdictLog

    res, cpu = cfg["resources"], cfg["resources"]["cpu_task_cpus"]
    llm = cfg["curate"].get("llm") or {}
    pools = curation_pools(cfg)  # the same choice check_cpus counted

    def drop_rejected(ds):
        return ds.map_batches(RejectsSplit(dirs["rejects"], pass_columns=None), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)

    if "perplexity" in pools:
        from factory.curate.perplexity import PerplexityFilter

        r = res.get("perplexity") or {}
        kwargs = perplexity_kwargs(cfg)
        ds = drop_rejected(ds).map_batches(
            PerplexityFilter, fn_constructor_kwargs=kwargs, compute=_actor_pool(r), batch_size=kwargs["batch_size"],
            num_gpus=gpus["perplexity"], num_cpus=r.get("num_cpus", 1), batch_format="pyarrow",
        )
    if llm.get("enabled"):
        ds = drop_rejected(ds)
        if llm.get("backend", "hf") == "vllm":
            ds = vllm_judge(ds, llm)
        elif "judge" in pools:  # the hf backend's actor pool
            r = res.get("judge") or {}
            kwargs = judge_kwargs(cfg)
            ds = ds.map_batches(
                HFJudge, fn_constructor_kwargs=kwargs, compute=_actor_pool(r), batch_size=kwargs["batch_size"],
                num_gpus=gpus["judge"], num_cpus=r.get("num_cpus", 1), batch_format="pyarrow",
            )
        else:
            raise ValueError(f"curate.llm.backend={llm.get('backend')!r}: expected hf or vllm")
        ds = ds.map_batches(VerdictLog(dirs["llm_judge"]), batch_size=1024, batch_format="pyarrow", num_cpus=cpu)
    return ds


def vllm_judge(ds, llm: dict):
    """The LLM judge on vLLM engines through Ray Data's LLM API (imported only here: the `llm` extra)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from factory.curate.judge import VllmRequest, VllmVerdict, judged_rows, vllm_processor_kwargs

    prompt = llm.get("prompt") or {}
    processor = build_processor(
        vLLMEngineProcessorConfig(**vllm_processor_kwargs(llm)),
        preprocess=VllmRequest(prompt.get("system"), prompt.get("user", ""), llm.get("max_new_tokens", 4)),
        postprocess=VllmVerdict(llm.get("on_unparseable", "keep")),
    )
    return processor(ds).map_batches(judged_rows, batch_size=1024, batch_format="pyarrow", num_cpus=0.1)
