"""Where each stage runs: tasks or an actor pool, and the CPUs, GPUs and memory each task or actor
asks for — from the stage's declaration (`needs`, `memory_bytes()`), the pool's settings in
`resources.<pool>` and, for GPUs, what the cluster has."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from factory.errors import RunError
from factory.pipeline import as_pool
from factory.stage import GiB, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    cpus: float
    gpus: float = 0.0
    memory: int = 0  # bytes; 0: no reservation
    actors: tuple[int, int] | None = None  # (min, max) of an actor pool; None: Ray tasks
    threads: int | None = None  # torch threads per actor


def pool_of(stage: Stage, resources: dict):
    return as_pool(resources.get(stage.pool)) if stage.pool else None


def gpu_shares(stages: list[Stage], resources: dict, cluster_gpus: float) -> dict[int, float]:
    """GPUs per actor of each stage with a pool (by id), all of which stream at once, so their
    pools must fit the cluster together.

    Defaults: the stage's `needs.gpus` while its device is CUDA. Where the cluster has fewer GPUs
    than the smallest pools ask for (a one-GPU machine), defaulted stages take their `gpu_share`
    and a defaulted stage without one (synthesis) takes what the others leave of one GPU, so
    everything fits beside it instead of a pool waiting for a GPU that never comes. Explicit
    `num_gpus` values are never changed; `cluster_gpus` of 0 (an autoscaler yet to add GPU
    nodes) changes nothing either.
    """
    pools = {id(s): pool_of(s, resources) for s in stages}
    actors = {id(s): pools[id(s)].actors for s in stages}
    shares = {id(s): (pools[id(s)].num_gpus if pools[id(s)].num_gpus is not None else s.needs.gpus if s.on_gpu() else 0.0)
              for s in stages}

    def asked() -> float:
        return sum(actors[k] * shares[k] for k in shares)

    if not 0 < cluster_gpus < asked():
        return shares
    defaulted = [s for s in stages if pools[id(s)].num_gpus is None and shares[id(s)] > 0]
    for s in defaulted:
        if s.needs.gpu_share is not None:
            shares[id(s)] = s.needs.gpu_share
    takers = [s for s in defaulted if s.needs.gpu_share is None]
    beside = sum(actors[k] * shares[k] for k in shares if k not in {id(s) for s in takers})
    if takers and beside < 1:
        for s in takers:
            shares[id(s)] = round((1.0 - beside) / len(takers), 6)
    named = ", ".join(f"{s.pool} {actors[id(s)]}×{shares[id(s)]:g}" for s in stages if shares[id(s)])
    if asked() > cluster_gpus:
        log.warning("the GPU stages ask for %g GPUs at their smallest pool sizes (%s) and the cluster has %g now: they wait for "
                    "the autoscaler to add GPUs; on a fixed cluster, lower resources.*.actors or set resources.*.num_gpus",
                    asked(), named, cluster_gpus)
    else:
        log.info("%g GPU(s) shared by the GPU stages: %s", cluster_gpus, named)
    return shares


def place(stage: Stage, resources: dict, gpus: float = 0.0) -> Placement:
    """One stage's placement; `gpus` per actor from gpu_shares."""
    pool = pool_of(stage, resources)
    if pool is None or stage.engine() != "actors":
        return Placement(cpus=float(resources.get("cpu_task_cpus", 0.25)))
    declared = stage.resources()
    memory = int(pool.memory_gb * GiB) if pool.memory_gb is not None else declared.memory
    return Placement(
        cpus=float(pool.num_cpus if pool.num_cpus is not None else declared.cpus),
        gpus=float(gpus),
        memory=memory,
        actors=(pool.actors, pool.max_actors or pool.actors),
        threads=pool.torch_threads if pool.torch_threads is not None else declared.threads,
    )


def plan(stages: list[Stage], resources: dict, cluster_gpus: float) -> dict[int, Placement]:
    """The placement of every stage (by id) of a run."""
    shares = gpu_shares([s for s in stages if s.engine() == "actors"], resources, cluster_gpus)
    return {id(s): place(s, resources, shares.get(id(s), 0.0)) for s in stages}


def pool_cpus(stages: list[Stage], places: dict[int, Placement]) -> dict[str, float]:
    """CPUs each pool (by its resources.<pool> name) holds at its smallest size."""
    out: dict[str, float] = {}
    for s in stages:
        if places[id(s)].actors:
            out[s.pool] = out.get(s.pool, 0.0) + places[id(s)].actors[0] * places[id(s)].cpus
    return out


def check_cpus(stream: list[Stage], curation: list[Stage], places: dict[int, Placement], cluster_cpus: float,
               local: bool) -> float:
    """CPUs left beside the pools that hold theirs for the whole stream (generators, scorer) at
    their smallest sizes; refuse (local Ray) or warn when under 1. Ray Data's repartition step in
    front of them takes a whole CPU per task and offers no setting to ask for less, so without one
    whole CPU free the stream stops and the run waits for ever.

    `curation`: the model filters' pools. They hold their CPUs until every caption has passed
    them, so with them under 1 CPU is left only later: synthesis then starts once curation has
    finished every caption. A warning, since the run still ends.
    """
    pools = pool_cpus(stream, places)
    free = cluster_cpus - sum(pools.values())
    if free < 1:
        what = (f"the actor pools take {sum(pools.values()):g} of the {cluster_cpus:g} CPUs ("
                + ", ".join(f"{s} {v:g}" for s, v in pools.items() if v) + "), and Ray Data's repartition step needs one whole CPU")
        if local:
            raise RunError(f"{what}: lower resources.*.num_cpus or resources.*.actors, or raise ray.num_cpus")
        log.warning("%s: the run waits until the autoscaler adds CPUs", what)
        return free
    more = pool_cpus(curation, places)
    if more and free - sum(more.values()) < 1:
        log.warning("the %s pool(s) take %g more CPUs, leaving %g of %g beside all pools: synthesis starts only once they have "
                    "curated every caption, as Ray Data's repartition step in front of it needs one whole CPU; lower "
                    "resources.*.num_cpus or raise %s to stream", " and ".join(more), sum(more.values()),
                    free - sum(more.values()), cluster_cpus, "ray.num_cpus" if local else "the cluster's CPUs")
    return free
