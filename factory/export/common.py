"""What the exporters share: reading dataset/'s parts batch by batch, names and instructions."""
from __future__ import annotations

import hashlib
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from factory.io import files
from factory.paths import CONF_DIR

DEFAULT_INSTRUCTIONS = f"{CONF_DIR}/export/llava_instructions.yaml"


def dataset_files(directory: str) -> list[str]:
    """The dataset's Parquet parts: top level only (not the exports' folders, which may hold millions of files)."""
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
