"""Exports of dataset/ into the formats people train on: LLaVA JSON, WebDataset shards, a Hub card.

Each exporter streams the dataset's Parquet files batch by batch (never all images at once) and
writes into the run's staging folder, which run.py renames to dataset/ only when all is written.
"""
from __future__ import annotations

import hashlib
import re
import time
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from factory.config import CONF_DIR
from factory.io import files

DEFAULT_INSTRUCTIONS = f"{CONF_DIR}/export/llava_instructions.yaml"


def dataset_files(directory: str) -> list[str]:
    """The dataset's Parquet parts: top level only (not the exports' folders, which may hold millions of files)."""
    import pyarrow.fs as pafs

    fs, p = files.resolve(directory)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(files.join(directory, i.base_name) for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not files.is_hidden(i.base_name))


def dataset_batches(directory: str, columns: list[str], batch_size: int = 256) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` from every Parquet part, one batch in memory at a time."""
    for path in dataset_files(directory):
        fs, p = files.resolve(path)
        with fs.open_input_file(p) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def image_extension(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic number."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise ValueError(f"unknown image encoding (first bytes {data[:12]!r}): expected PNG, JPEG or WebP")


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_name(rank: int, caption_id: str) -> str:
    """A file stem for a selected pair: unique by rank, readable by id, free of dots and slashes.

    WebDataset splits a member's key from its extension at the first dot, so none may appear here.
    """
    return f"{int(rank):09d}_{_UNSAFE.sub('_', str(caption_id))[:64]}"


def load_instructions(path: str | None) -> list[str]:
    """The LLaVA instructions: a YAML list of strings (null path: the bundled list)."""
    path = path or DEFAULT_INSTRUCTIONS
    try:
        items = yaml.safe_load(files.read_bytes(path))
    except Exception as e:  # a missing or unparsable file
        raise ValueError(f"export.llava_instructions={path}: cannot read a YAML list of instructions ({e})") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError(f"export.llava_instructions={path}: expected a non-empty YAML list of strings")
    return [i.strip() for i in items]


def pick(items: list[str], caption_id: str) -> str:
    """One item chosen by a hash of the id: the same id gets the same instruction on every run."""
    h = int.from_bytes(hashlib.blake2b(str(caption_id).encode(), digest_size=8).digest(), "little")
    return items[h % len(items)]


def check_exports(export_cfg: dict) -> None:
    """Fail before a run, not after hours of synthesis, on an export setting that cannot work."""
    if export_cfg.get("llava"):
        load_instructions(export_cfg.get("llava_instructions"))
    shard_size = export_cfg.get("shard_size", 1000)
    if export_cfg.get("webdataset") and (isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1):
        raise ValueError(f"export.shard_size must be a whole number ≥ 1, got {shard_size!r}")


def write_exports(dataset_dir: str, export_cfg: dict, counts: dict, config: dict) -> dict:
    """Run the enabled exports on a (staging) dataset folder; returns what each wrote and how long it took."""
    out = {}
    if export_cfg.get("llava"):
        from factory.export.llava import write_llava

        t = time.perf_counter()
        out["llava"] = write_llava(dataset_dir, load_instructions(export_cfg.get("llava_instructions")))
        out["llava"]["seconds"] = round(time.perf_counter() - t, 3)
    if export_cfg.get("webdataset"):
        from factory.export.webdataset import write_shards

        t = time.perf_counter()
        out["webdataset"] = write_shards(dataset_dir, int(export_cfg.get("shard_size", 1000)))
        out["webdataset"]["seconds"] = round(time.perf_counter() - t, 3)
    if export_cfg.get("hf"):
        from factory.export.hf import write_card

        t = time.perf_counter()
        out["hf"] = write_card(dataset_dir, counts, config)
        out["hf"]["seconds"] = round(time.perf_counter() - t, 3)
    return out
