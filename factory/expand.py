"""Caption rows → sample rows (id, caption, sample, generator, seed), skipping samples already on disk."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from factory import schema as S
from factory.checks import number
from factory.seeds import sample_seed
from factory.stage import Stage


def sample_key(caption_id: str, sample: int, generator: str) -> int:
    """A 63-bit key of (id, sample, generator), for the sorted array of samples already done."""
    d = hashlib.blake2b(f"{caption_id}\x1f{sample}\x1f{generator}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def sample_keys(table: pa.Table) -> np.ndarray:
    """sample_key of each row's (id, sample, generator), in row order."""
    cols = (table.column(c).to_pylist() for c in (S.ID, S.SAMPLE, S.GENERATOR))
    return np.array([sample_key(i, s, g) for i, s, g in zip(*cols)], dtype=np.int64)


@dataclass
class ExpandSamples(Stage):
    """Stage: (id, caption) → `repeat` sample rows per generator with their seeds, minus those
    already done. Rows come generator by generator, so that the blocks reaching each generator's
    pool are mostly its own."""

    name: ClassVar[str] = "expand"
    # How many samples a caption gets, for which generators, and which are on disk already never
    # change what a sample is.
    speed_only: ClassVar[frozenset[str]] = frozenset({"repeat", "done", "generators"})

    repeat: int = 1
    seed: int = 0
    generators: tuple = ("",)  # the generators' names
    done: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted sample keys already made

    def __post_init__(self) -> None:
        super().__post_init__()
        number("synth.repeat", self.repeat, whole=True, low=1)

    def is_done(self, cid: str, sample: int, generator: str) -> bool:
        if not len(self.done):
            return False
        k = sample_key(cid, sample, generator)
        j = np.searchsorted(self.done, k)
        return bool(j < len(self.done) and self.done[j] == k)

    def process(self, batch: pa.Table) -> dict:
        rows = []
        pairs = list(zip(batch.column(S.ID).to_pylist(), batch.column(S.CAPTION).to_pylist()))
        for g in self.generators:
            rows += [(cid, cap, s, g) for cid, cap in pairs for s in range(self.repeat) if not self.is_done(cid, s, g)]
        ids, caps, samples, gens = zip(*rows) if rows else ((), (), (), ())
        return {
            S.ID: np.array(ids, dtype=object),
            S.CAPTION: np.array(caps, dtype=object),
            S.SAMPLE: np.array(samples, dtype=np.int32),
            S.GENERATOR: np.array(gens, dtype=object),
            S.SEED: np.array([sample_seed(self.seed, c, s) for c, s in zip(ids, samples)], dtype=np.int64),
        }
