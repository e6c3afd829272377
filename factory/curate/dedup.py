"""Exact deduplication of ids and of normalized captions.

Which row of a duplicate group survives must not depend on scheduling, or a resumed run would
keep other captions: a cheap pass over the text finds, for every group, the first row in input
order (`pos`), and the streaming pass then marks the others with `MarkRejected`.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from factory import schema as S
from factory.errors import SettingError
from factory.io import files
from factory.stage import Deduplicator, ExactStep, Stage

_WS = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: what counts as 'the same caption'."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalize_caption(text).encode(), digest_size=8).digest(), "little", signed=True)


def dedup_keys(batch: pa.Table) -> pa.Table:
    """The few columns the duplicate search needs, for the rows still valid."""
    batch = batch.filter(pc.is_null(batch.column(S.REASON)))
    hashes = [text_hash(c) for c in batch.column(S.CAPTION).to_pylist()]
    return pa.table({S.ID: batch.column(S.ID), S.POS: batch.column(S.POS), S.NORM_HASH: pa.array(hashes, pa.int64())})


def split_duplicates(keys: pa.Table, key: str, reason: str) -> tuple[pa.Table, pa.Table]:
    """Split rows into (first of each `key` group, the others marked duplicate of that first)."""
    keys = keys.sort_by([(key, "ascending"), (S.POS, "ascending")])
    k = keys.column(key).to_numpy()
    first = np.ones(len(k), dtype=bool)
    first[1:] = k[1:] != k[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    ids = keys.column(S.ID).to_numpy(zero_copy_only=False)
    dup = ~first
    losers = pa.table(
        {
            S.POS: keys.column(S.POS).filter(pa.array(dup)),
            S.REASON: pa.array([reason] * int(dup.sum()), pa.string()),
            S.DETAIL: pa.array([f"duplicate of id {i}" for i in ids[group_start[dup]]], pa.string()),
        }
    )
    return keys.filter(pa.array(first)), losers


LOSERS = pa.schema([pa.field(S.POS, pa.int64()), pa.field(S.REASON, pa.string()), pa.field(S.DETAIL, pa.string())])


def find_duplicates(keys: pa.Table, ids: bool = True, captions: bool = True) -> pa.Table:
    """Rows to reject as (pos, reason, detail): repeated ids first, then repeated captions."""
    parts = []
    if ids:
        keys, lost = split_duplicates(keys, S.ID, S.R_DUP_ID)
        parts.append(lost)
    if captions:
        _, lost = split_duplicates(keys, S.NORM_HASH, S.R_DUP_CAPTION)
        parts.append(lost)
    if not parts:
        return LOSERS.empty_table()
    return pa.concat_tables(parts)


@dataclass
class ExactDedup(Deduplicator):
    """Repeated ids, then repeated captions (up to case, Unicode form and white space): the first
    row in input order stays."""

    config_name: ClassVar[str] = "exact_dedup"
    name: ClassVar[str] = "exact_dedup"
    reasons: ClassVar[tuple[str, ...]] = (S.R_DUP_ID, S.R_DUP_CAPTION)

    ids: bool = True  # must stay true: a caption's samples are keyed by its id
    captions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ids:
            raise SettingError("ids", "=false: a caption's samples and images are keyed by its id, so ids must be unique "
                               "(rows with a repeated id are rejected as duplicate_id); to keep such rows, drop the id column "
                               "(a missing id becomes a hash of the caption) or give them new ids")

    def losers(self, keys: pa.Table) -> pa.Table:
        return find_duplicates(keys, ids=self.ids, captions=self.captions) if self.enabled else LOSERS.empty_table()

    def shuffle_steps(self) -> list[ExactStep]:
        if not self.enabled:
            return []
        return ([ExactStep(S.ID, S.R_DUP_ID)] if self.ids else []) + ([ExactStep(S.NORM_HASH, S.R_DUP_CAPTION)] if self.captions else [])


class MarkRejected:
    """Sets `reason`/`detail` on rows whose `pos` a pre-pass decided to reject (dedup, near-dup),
    from a (pos, reason, detail) table in memory."""

    def __init__(self, rejected: pa.Table):
        self.pos = rejected.column(S.POS).to_numpy()
        order = np.argsort(self.pos)
        self.pos = self.pos[order]
        self.reason = np.asarray(rejected.column(S.REASON).to_pylist(), dtype=object)[order]
        self.detail = np.asarray(rejected.column(S.DETAIL).to_pylist(), dtype=object)[order]

    def __call__(self, batch: pa.Table) -> pa.Table:
        if len(self.pos) == 0 or batch.num_rows == 0:
            return batch
        pos = batch.column(S.POS).to_numpy()
        idx = np.clip(np.searchsorted(self.pos, pos), 0, len(self.pos) - 1)
        hit = (self.pos[idx] == pos) & pc.is_null(batch.column(S.REASON)).to_numpy(zero_copy_only=False)
        if not hit.any():
            return batch
        reasons = batch.column(S.REASON).to_pylist()
        details = batch.column(S.DETAIL).to_pylist()
        for i in np.nonzero(hit)[0]:
            reasons[i], details[i] = self.reason[idx[i]], self.detail[idx[i]]
        batch = batch.set_column(batch.schema.get_field_index(S.REASON), S.REASON, pa.array(reasons, pa.string()))
        return batch.set_column(batch.schema.get_field_index(S.DETAIL), S.DETAIL, pa.array(details, pa.string()))


@dataclass
class MarkDuplicates(Stage):
    """Stage: marks the rows the pre-pass found to lose a duplicate group. The losers are a Parquet
    file sorted by pos (written by the pre-pass, never captured in a task): each batch reads just
    the part of it that covers its own positions."""

    name: ClassVar[str] = "duplicates"
    reasons: ClassVar[tuple[str, ...]] = ExactDedup.reasons + (S.R_NEAR_DUP,)

    path: str = ""  # the losers file (pos, reason, detail)

    def setup(self) -> None:
        fs, path = files.resolve(self.path)
        self._losers = pads.dataset(path, filesystem=fs, format="parquet")

    def process(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return batch
        pos = batch.column(S.POS)
        lo, hi = pc.min(pos).as_py(), pc.max(pos).as_py()
        part = self._losers.to_table(filter=(pc.field(S.POS) >= lo) & (pc.field(S.POS) <= hi))
        return MarkRejected(part)(batch)
