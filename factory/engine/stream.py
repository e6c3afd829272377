"""The run's Ray Data streams, built from the declared pipeline: every stage goes through the adapter."""
from __future__ import annotations

import dataclasses

import ray

from factory import schema as S
from factory.curate.dedup import MarkDuplicates
from factory.engine import adapter, vllm
from factory.engine.placement import Placement
from factory.io.read_files import ReadFiles
from factory.io.write import CuratedWriter, RejectsSplit
from factory.pipeline import Pipeline
from factory.stage import CaptionFilter


def files_dataset(paths: list[str]):
    """One block per input file: the unit a read task takes."""
    return ray.data.from_items([{"path": p, "file_index": i} for i, p in enumerate(paths)], override_num_blocks=len(paths))


def with_filter(ds, f: CaptionFilter, places: dict[int, Placement], output: str):
    """`ds` through one caption filter and its side log, if it keeps one."""
    ds = vllm.apply(ds, f) if f.engine() == "vllm" else adapter.apply(ds, f, places.get(id(f), places["tasks"]))
    side = f.side_log(output)
    return adapter.apply(ds, side, places["tasks"]) if side is not None else ds


def curated_captions(paths: list[str], pipeline: Pipeline, losers_path: str, dirs: dict, places: dict,
                     columns: tuple = (S.ID, S.CAPTION)):
    """read → early filters → duplicates marked → late filters → rejects/ written: the rows
    curation keeps (their `columns`). Rows rejected so far go to rejects/ before each late filter,
    so the models spend time on live captions only."""
    task = places["tasks"]
    ds = adapter.apply(files_dataset(paths), ReadFiles(again=True), task)
    for f in pipeline.early_filters():
        ds = adapter.apply(ds, f, task)
    ds = adapter.apply(ds, MarkDuplicates(path=losers_path), task)
    for f in pipeline.late_filters():
        ds = adapter.apply(ds, RejectsSplit(directory=dirs["rejects"], pass_columns=None), task)
        ds = with_filter(ds, f, places, dirs["output"])
    return adapter.apply(ds, RejectsSplit(directory=dirs["rejects"], pass_columns=tuple(columns)), task)


def curation_dataset(paths: list[str], pipeline: Pipeline, losers_path: str, dirs: dict, places: dict):
    """curated captions → curated/ (`python -m factory curate`): one summary row per file written."""
    ds = curated_captions(paths, pipeline, losers_path, dirs, places, columns=tuple(S.CURATED.names))
    return adapter.apply(ds, CuratedWriter(directory=dirs["curated"]), places["tasks"])


def generation_dataset(paths: list[str], pipeline: Pipeline, losers_path: str, done, dirs: dict, places: dict):
    """curated captions → expand → synthesize → score → candidates/: a lazy dataset of one small
    summary row per written candidates file; everything streams."""
    ds = curated_captions(paths, pipeline, losers_path, dirs, places)
    ds = adapter.apply(ds, dataclasses.replace(pipeline.expand.stage, done=done), places["tasks"])
    # One block per synthesis batch: the unit that streams to the GPUs, and all a crash can cost.
    # (Fused CPU stages coalesce their small outputs into one big block otherwise, which would
    # reach the writer only once all of it is synthesized.)
    ds = ds.repartition(target_num_rows_per_block=pipeline.generator.stage.batch_size, strict=True)
    # Several generators: one pool each, chained; each makes its own rows' images and passes the
    # others on (factory/synth/diffusion.py Generator.process).
    for g in pipeline.generators:
        ds = adapter.apply(ds, g.stage, places[id(g.stage)])
    ds = adapter.apply(ds, pipeline.scorer.stage, places[id(pipeline.scorer.stage)])
    writer = dataclasses.replace(pipeline.writer.stage, directory=dirs["candidates"])
    return adapter.apply(ds, writer, places["tasks"])
