"""WebDataset shards: dataset/wds/shard-%06d.tar holding KEY.{png,jpg,webp}, KEY.txt and KEY.json."""
from __future__ import annotations

import io
import json
import tarfile

from factory import schema as S
from factory.export.common import dataset_batches, image_extension, sample_name
from factory.io import files

SHARD_PATTERN = "shard-%06d.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: reruns give identical shards
    tar.addfile(info, io.BytesIO(data))


class _ShardWriter:
    """Tar shards of at most `shard_size` samples, each written under a hidden name, then renamed."""

    def __init__(self, directory: str, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"export.shard_size must be ≥ 1, got {shard_size}")
        self.fs, self.root = files.resolve(directory)
        self.fs.create_dir(self.root, recursive=True)
        self.shard_size, self.index, self.in_shard = shard_size, -1, 0
        self.stream = self.tar = None
        self.names: list[str] = []

    def _open(self) -> None:
        self.index += 1
        name = SHARD_PATTERN % self.index
        self.tmp, self.final = files.temp_path(self.root, name), f"{self.root}/{name}"
        self.stream = self.fs.open_output_stream(self.tmp)
        self.tar = tarfile.open(fileobj=self.stream, mode="w")  # plain tar writes forward only: any filesystem
        self.in_shard = 0
        self.names.append(name)

    def abort(self) -> None:
        """Drop the shard in progress: a half-written shard never gets its final name."""
        if self.tar is not None:
            self.stream.close()
            self.fs.delete_file(self.tmp)
            self.tar = self.stream = None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.stream.close()
            self.fs.move(self.tmp, self.final)
            self.tar = self.stream = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None or self.in_shard >= self.shard_size:
            self.close()
            self._open()
        for ext, data in members.items():
            _add(self.tar, f"{key}.{ext}", data)
        self.in_shard += 1


def sample_members(row: dict, image: bytes) -> dict[str, bytes]:
    meta = {k: row[k] for k in (S.ID, S.SAMPLE, S.SEED, S.CLIP_SCORE, S.SSIM, S.SCORE, S.RANK, S.WIDTH, S.HEIGHT)}
    return {
        image_extension(image): image,
        "txt": row[S.CAPTION].encode("utf-8"),
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }


def write_shards(dataset_dir: str, shard_size: int = 1000) -> dict:
    """Stream the dataset into tar shards under dataset/wds/; returns the shard names and counts."""
    writer = _ShardWriter(files.join(dataset_dir, "wds"), shard_size)
    cols = [S.ID, S.CAPTION, S.SAMPLE, S.SEED, S.WIDTH, S.HEIGHT, S.CLIP_SCORE, S.SSIM, S.SCORE, S.RANK]
    n = 0
    try:
        for batch in dataset_batches(dataset_dir, cols + [S.IMAGE]):
            rows = batch.select(cols).to_pylist()
            images = batch.column(S.IMAGE)
            for i, row in enumerate(rows):
                writer.write(sample_name(row[S.RANK], row[S.ID]), sample_members(row, images[i].as_py()))
                n += 1
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"folder": "wds", "shards": writer.names, "rows": n}
