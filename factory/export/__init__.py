"""Exports of dataset/ into the formats people train on: LLaVA JSON, WebDataset shards, a Hub card.

Each exporter streams the dataset's Parquet files batch by batch (never all images at once) and
writes into the run's staging folder, which the run renames to dataset/ only when all is written.
"""
from __future__ import annotations

import time

from factory.checks import number
from factory.export.common import load_instructions
from factory.export.hf import write_card
from factory.export.llava import write_llava
from factory.export.webdataset import write_shards


def check_exports(export) -> None:
    """Fail before a run, not after hours of synthesis, on an export setting (settings.ExportSettings) that cannot work."""
    if export.llava:
        load_instructions(export.llava_instructions)
    if export.webdataset:
        number("export.shard_size", export.shard_size, whole=True, low=1)


def write_exports(dataset_dir: str, export, counts: dict, config: dict) -> dict:
    """Run the enabled exports (settings.ExportSettings) on a (staging) dataset folder; returns what
    each wrote and how long it took. `config`: the run's config as the manifest records it."""
    out = {}
    if export.llava:
        t = time.perf_counter()
        out["llava"] = write_llava(dataset_dir, load_instructions(export.llava_instructions))
        out["llava"]["seconds"] = round(time.perf_counter() - t, 3)
    if export.webdataset:
        t = time.perf_counter()
        out["webdataset"] = write_shards(dataset_dir, int(export.shard_size))
        out["webdataset"]["seconds"] = round(time.perf_counter() - t, 3)
    if export.hf:
        t = time.perf_counter()
        out["hf"] = write_card(dataset_dir, counts, config)
        out["hf"]["seconds"] = round(time.perf_counter() - t, 3)
    return out
