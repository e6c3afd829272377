"""Writer stages: each batch becomes one whole Parquet file, named by a hash of its keys.

A retried task writes the same name again, so retries never duplicate rows; the file is written
aside and renamed, so a killed run never leaves a file that fails to open. A writer makes its folder
when it is built (on the driver) and its tasks write only into that folder (`make_parent=False`),
so a node that lacks the run's storage fails loudly instead of keeping rows on its own disk.
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from factory import schema as S
from factory.errors import SettingError
from factory.io import files
from factory.stage import Stage

IMAGE_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}


def check_image_format(fmt: str) -> str:
    """PIL's name of an image.format, or one line saying what is allowed."""
    if fmt not in IMAGE_FORMATS:
        raise SettingError("image.format", f"={fmt!r}: expected one of {sorted(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[fmt]


def keys_digest(*columns) -> str:
    h = hashlib.blake2b(digest_size=10)
    for col in columns:
        for v in col:
            h.update(str(v).encode())
            h.update(b"\x1f")
    return h.hexdigest()


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    kwargs = {"compress_level": 1} if fmt == "png" else {"quality": quality}
    Image.fromarray(image).save(buf, format=check_image_format(fmt), **kwargs)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class RejectsSplit(Stage):
    """Stage: caption rows → writes the rejected ones to rejects/, passes the kept ones on: their
    (id, caption), or whole (`pass_columns` None) for stages that may still reject them."""

    name: ClassVar[str] = "rejects"

    directory: str = ""
    pass_columns: Optional[tuple] = (S.ID, S.CAPTION)

    def prepare(self) -> None:
        files.makedirs(self.directory)  # on the driver: see make_parent=False

    def process(self, batch: pa.Table) -> pa.Table:
        rejected = pc.is_valid(batch.column(S.REASON))
        bad = batch.filter(rejected)
        if bad.num_rows:
            table = bad.select([f.name for f in S.REJECTS]).cast(S.REJECTS)
            name = f"part-{keys_digest(table.column(S.SOURCE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(self.directory, name), table, make_parent=False)
        kept = batch.filter(pc.invert(rejected))
        return kept if self.pass_columns is None else kept.select(list(self.pass_columns))


@dataclass
class CuratedWriter(Stage):
    """Stage: the captions curation kept (id, caption, source) → curated/ Parquet → one summary row."""

    name: ClassVar[str] = "curated"

    directory: str = ""

    def prepare(self) -> None:
        files.makedirs(self.directory)

    def process(self, batch: pa.Table) -> pa.Table:
        table = batch.select(S.CURATED.names).cast(S.CURATED)
        if table.num_rows:
            name = f"part-{keys_digest(table.column(S.SOURCE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(self.directory, name), table, make_parent=False)
        return pa.table({"rows": [table.num_rows]})


@dataclass
class CandidateWriter(Stage):
    """Stage: scored samples → candidates/ Parquet (images encoded here, on CPU) → one summary row."""

    name: ClassVar[str] = "write"
    batch_format: ClassVar[str] = "numpy"
    speed_only: ClassVar[frozenset[str]] = frozenset({"threads", "directory", "batch_size"})

    directory: str = ""
    image_format: str = "png"
    quality: int = 95
    threads: int = 4
    batch_size: int = 16  # rows per candidates file (score.batch_size)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_image_format(self.image_format)

    def prepare(self) -> None:
        files.makedirs(self.directory)

    def process(self, batch: dict) -> dict:
        images = batch[S.IMAGE]
        with ThreadPoolExecutor(self.threads) as pool:  # zlib/libwebp release the GIL
            encoded = list(pool.map(lambda im: encode_image(im, self.image_format, self.quality), images))
        table = candidates_table(batch, encoded)
        keys = (table.column(c).to_pylist() for c in (S.ID, S.SAMPLE, S.GENERATOR))
        name = f"part-{keys_digest(*keys)}.parquet"
        files.write_parquet_atomic(files.join(self.directory, name), table, compression="none", make_parent=False)
        reasons = [str(r) for r in batch[S.REASON] if str(r)]
        summary = {
            "rows": np.array([len(encoded)]),
            "unusable": np.array([len(reasons)]),
            "unusable_reasons": np.array([";".join(reasons)], dtype=object),
            "image_bytes": np.array([sum(len(e) for e in encoded)]),
        }
        summary.update({k: np.array([float(np.sum(v))]) for k, v in batch.items() if k.startswith(S.BUSY)})
        return summary


def candidates_table(batch: dict, encoded: list[bytes]) -> pa.Table:
    """A scored batch (numpy columns) with its encoded images as a table of schema.CANDIDATES."""
    return pa.table(
        {
            S.ID: pa.array([str(x) for x in batch[S.ID]], pa.string()),
            S.CAPTION: pa.array([str(x) for x in batch[S.CAPTION]], pa.string()),
            S.SAMPLE: pa.array(batch[S.SAMPLE], pa.int32()),
            S.GENERATOR: pa.array([str(g) for g in batch[S.GENERATOR]], pa.string()),
            S.SEED: pa.array(batch[S.SEED], pa.int64()),
            S.IMAGE: pa.array(encoded, pa.binary()),
            S.WIDTH: pa.array(batch[S.WIDTH], pa.int32()),
            S.HEIGHT: pa.array(batch[S.HEIGHT], pa.int32()),
            S.CLIP_SCORE: pa.array(batch[S.CLIP_SCORE], pa.float64(), from_pandas=True),
            S.SSIM: pa.array(batch[S.SSIM], pa.float64(), from_pandas=True),
            S.SCORE: pa.array(batch[S.SCORE], pa.float64(), from_pandas=True),
            S.REASON: pa.array([str(r) or None for r in batch[S.REASON]], pa.string()),  # "" in flight = ok
        },
        schema=S.CANDIDATES,
    )
