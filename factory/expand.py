"""Caption rows → sample rows (id, caption, sample, seed), skipping samples already on disk."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from factory import schema as S
from factory.seeds import sample_seed
from factory.checks import number
from factory.stage import Stage


def sample_key(caption_id: str, sample: int) -> int:
    """A 63-bit key of (id, sample), for the sorted array of samples already done."""
    d = hashlib.blake2b(f"{caption_id}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def sample_keys(table: pa.Table) -> np.ndarray:
    """sample_key of each row's (id, sample), in row order."""
    ids = table.column(S.ID).to_pylist()
    samples = table.column(S.SAMPLE).to_pylist()
    return np.array([sample_key(i, s) for i, s in zip(ids, samples)], dtype=np.int64)


@dataclass
class ExpandSamples(Stage):
    """Stage: (id, caption) → `repeat` sample rows with their seeds, minus those already done."""

    name: ClassVar[str] = "expand"
    # How many samples a caption gets and which are on disk already never change what a sample is.
    speed_only: ClassVar[frozenset[str]] = frozenset({"repeat", "done"})

    repeat: int = 1
    seed: int = 0
    done: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted sample keys already made

    def __post_init__(self) -> None:
        super().__post_init__()
        number("synth.repeat", self.repeat, whole=True, low=1)

    def process(self, batch: pa.Table) -> dict:
        ids, caps, samples, seeds = [], [], [], []
        for cid, cap in zip(batch.column(S.ID).to_pylist(), batch.column(S.CAPTION).to_pylist()):
            for s in range(self.repeat):
                if len(self.done):
                    k = sample_key(cid, s)
                    j = np.searchsorted(self.done, k)
                    if j < len(self.done) and self.done[j] == k:
                        continue
                ids.append(cid)
                caps.append(cap)
                samples.append(s)
                seeds.append(sample_seed(self.seed, cid, s))
        return {
            S.ID: np.array(ids, dtype=object),
            S.CAPTION: np.array(caps, dtype=object),
            S.SAMPLE: np.array(samples, dtype=np.int32),
            S.SEED: np.array(seeds, dtype=np.int64),
        }
