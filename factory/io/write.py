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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.io import files

IMAGE_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}


def keys_digest(*columns) -> str:
    h = hashlib.blake2b(digest_size=10)
    for col in columns:
        for v in col:
            h.update(str(v).encode())
            h.update(b"\x1f")
    return h.hexdigest()


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    kwargs = {"compress_level": 1} if fmt == "png" else {"quality": quality}
    Image.fromarray(image).save(buf, format=IMAGE_FORMATS[fmt], **kwargs)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class RejectsSplit:
    """Stage: caption rows → writes the rejected ones to rejects/, passes the kept (id, caption) on.

    `pass_columns=None` passes the kept rows whole (for stages that may still reject them).
    """

    def __init__(self, directory: str, pass_columns: list[str] | None = (S.ID, S.CAPTION)):
        self.directory = directory
        files.makedirs(directory)  # here, where the pipeline is built: see make_parent=False
        self.pass_columns = list(pass_columns) if pass_columns is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rejected = pc.is_valid(batch.column(S.REASON))
        bad = batch.filter(rejected)
        if bad.num_rows:
            table = bad.select([f.name for f in S.REJECTS]).cast(S.REJECTS)
            name = f"part-{keys_digest(table.column(S.SOURCE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(self.directory, name), table, make_parent=False)
        kept = batch.filter(pc.invert(rejected))
        return kept if self.pass_columns is None else kept.select(self.pass_columns)


class CandidateWriter:
    """Stage: scored samples → candidates/ Parquet (images encoded here, on CPU) → one summary row."""

    def __init__(self, directory: str, image_format: str = "png", quality: int = 95, threads: int = 4):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image.format={image_format!r}: expected one of {sorted(IMAGE_FORMATS)}")
        self.directory, self.format, self.quality, self.threads = directory, image_format, quality, threads
        files.makedirs(directory)

    def __call__(self, batch: dict) -> dict:
        images = batch[S.IMAGE]
        with ThreadPoolExecutor(self.threads) as pool:  # zlib/libwebp release the GIL
            encoded = list(pool.map(lambda im: encode_image(im, self.format, self.quality), images))
        n = len(encoded)
        table = pa.table(
            {
                S.ID: pa.array([str(x) for x in batch[S.ID]], pa.string()),
                S.CAPTION: pa.array([str(x) for x in batch[S.CAPTION]], pa.string()),
                S.SAMPLE: pa.array(batch[S.SAMPLE], pa.int32()),
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
        name = f"part-{keys_digest(table.column(S.ID).to_pylist(), table.column(S.SAMPLE).to_pylist())}.parquet"
        files.write_parquet_atomic(files.join(self.directory, name), table, compression="none", make_parent=False)
        reasons = [str(r) for r in batch[S.REASON] if str(r)]
        unusable = len(reasons)
        return {
            "rows": np.array([n]),
            "unusable": np.array([unusable]),
            "unusable_reasons": np.array([";".join(reasons)], dtype=object),
            "synth_s": np.array([float(np.sum(batch.get("_synth_s", 0.0)))]),
            "score_s": np.array([float(np.sum(batch.get("_score_s", 0.0)))]),
            "image_bytes": np.array([sum(len(e) for e in encoded)]),
        }
