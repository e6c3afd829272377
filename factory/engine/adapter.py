"""The one adapter from the stage contract to Ray Data: the only code that calls `map_batches` for a
stage. A stage with a pool becomes an actor pool whose actors call `setup()` once and then
`process()` per batch; any other stage becomes Ray tasks that set it up once per worker process.
Operators are named after `stage.label()`, which the summary and the error lines read back.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from ray.data import ActorPoolStrategy

from factory import schema as S
from factory.engine.placement import Placement
from factory.stage import Stage


class StageActor:
    """An actor of a stage's pool: sets the stage up in its constructor (models load once per actor)."""

    stage: Stage
    threads: int | None = None

    def __init__(self):
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.stage.loaded()
        self.timed = self.stage.batch_format == "numpy"

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = self.stage.process(batch)
        if self.timed:  # busy seconds, spread over the batch's rows (summed by the candidates writer)
            n = len(next(iter(out.values()))) if out else 0
            out[S.BUSY + self.stage.label()] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        return out


def actor_class(stage: Stage, threads: int | None) -> type:
    """A StageActor class of its own per stage, named after it (Ray names the operator after the class)."""
    return type(stage.label(), (StageActor,), {"stage": stage, "threads": threads})


def task_function(stage: Stage):
    """A function that runs the stage: set up on its first batch in each worker process."""

    def run(batch):
        return stage.loaded().process(batch)

    run.__name__ = run.__qualname__ = stage.label()
    return run


def apply(ds, stage: Stage, place: Placement):
    """`ds` followed by `stage`, placed as `place` says (its folders made here, on the driver)."""
    stage.prepare()
    kwargs = dict(batch_size=stage.batch_rows(), batch_format=stage.batch_format, num_cpus=place.cpus)
    if place.memory:
        kwargs["memory"] = place.memory
    if place.actors is None:
        return ds.map_batches(task_function(stage), **kwargs)
    low, high = place.actors
    compute = ActorPoolStrategy(size=low) if low == high else ActorPoolStrategy(min_size=low, max_size=high)
    return ds.map_batches(actor_class(stage, place.threads), compute=compute, num_gpus=place.gpus, **kwargs)
