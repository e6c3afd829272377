"""Exact deduplication of ids and of normalized captions.

Which row of a duplicate group survives must not depend on scheduling, or a resumed run would
keep other captions: a cheap pass over the text finds, for every group, the first row in input
order (`pos`), and the streaming pass then marks the others with `MarkRejected`.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S

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


def _losers(keys: pa.Table, key: str, reason: str) -> tuple[pa.Table, pa.Table]:
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


def find_duplicates(keys: pa.Table, ids: bool = True, captions: bool = True) -> pa.Table:
    """Rows to reject as (pos, reason, detail): repeated ids first, then repeated captions."""
    parts = []
    if ids:
        keys, lost = _losers(keys, S.ID, S.R_DUP_ID)
        parts.append(lost)
    if captions:
        _, lost = _losers(keys, S.NORM_HASH, S.R_DUP_CAPTION)
        parts.append(lost)
    if not parts:
        return pa.table({S.POS: pa.array([], pa.int64()), S.REASON: pa.array([], pa.string()), S.DETAIL: pa.array([], pa.string())})
    return pa.concat_tables(parts)


class MarkRejected:
    """Sets `reason`/`detail` on rows whose `pos` a pre-pass decided to reject (dedup, near-dup)."""

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
