"""Near-duplicate captions: MinHash over word shingles, LSH banding, union-find groups.

Two halves, so that captions never leave the workers:
- `minhash_signatures` (per batch, in parallel tasks of the pre-pass) turns captions into
  fixed-size integer signatures;
- `find_near_duplicates` (on the driver, ints only) buckets signatures by band, verifies every
  candidate pair by its estimated Jaccard similarity, joins pairs into groups and keeps one
  caption per group.

Which caption of a group is kept: the one with the smallest id, where ids that are integers
("7", "-3", "0012") compare as numbers and come before all other ids, which compare as strings
(by code point); equal ids fall back to input order (`pos`). So "2" < "10" < "a10" < "b".
"""
from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.curate.dedup import LOSERS
from factory.errors import SettingError
from factory.stage import Deduplicator, NearStep

_WORD = re.compile(r"\w+")
_SEED = 0x5EED_F00D  # the hash family is fixed: signatures from any worker or run agree


def shingle_words(text: str) -> list[str]:
    """Words as near-duplicate detection sees them: NFKC, case-folded, punctuation dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingle_hashes(text: str, size: int) -> list[int]:
    """32-bit hashes (CRC-32, stable across processes) of the word `size`-grams of a caption.

    A caption shorter than `size` words is one shingle of all its words.
    """
    words = shingle_words(text)
    if len(words) <= size:
        return [zlib.crc32(" ".join(words).encode())]
    return [zlib.crc32(" ".join(words[i : i + size]).encode()) for i in range(len(words) - size + 1)]


def hash_family(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-shift hash functions h(x) = (a*x + b) >> 32 mod 2**64: `num_perm` (a, b) pairs, a odd."""
    rng = np.random.default_rng(_SEED)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(captions: list[str], num_perm: int = 128, shingle_size: int = 1, chunk: int = 2048) -> np.ndarray:
    """(len(captions), num_perm) uint32 MinHash signatures, computed with numpy a chunk at a time."""
    a, b = hash_family(num_perm)
    out = np.empty((len(captions), num_perm), dtype=np.uint32)
    for start in range(0, len(captions), chunk):
        part = captions[start : start + chunk]
        shingles = [shingle_hashes(c, shingle_size) for c in part]
        counts = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=len(shingles))
        flat = np.fromiter((h for s in shingles for h in s), dtype=np.uint64, count=int(counts.sum()))
        with np.errstate(over="ignore"):  # multiply-shift hashing wraps around 2**64 on purpose
            hashed = (flat[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[start : start + len(part)] = np.minimum.reduceat(hashed, offsets, axis=0).astype(np.uint32)
    return out


def signature_column(captions: list[str], num_perm: int, shingle_size: int) -> pa.FixedSizeListArray:
    sig = minhash_signatures(captions, num_perm, shingle_size)
    return pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint32()), num_perm)


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) int64: one hash per band of rows; equal keys in a band make a candidate pair."""
    n, num_perm = signatures.shape
    if num_perm % bands:
        raise ValueError(f"curate.near_dup.bands={bands} must divide curate.near_dup.num_perm={num_perm}")
    rows = num_perm // bands
    mult = np.random.default_rng(_SEED + 1).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    values = signatures.reshape(n, bands, rows)
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):  # sum_r value_r * mult_r mod 2**64, one column at a time: 16x faster than .sum(axis=2)
            keys += values[:, :, r].astype(np.uint64) * mult[r]
    return keys.view(np.int64)


def candidate_pairs(keys: np.ndarray, max_bucket_span: int = 32) -> np.ndarray:
    """(m, 2) row-index pairs i < j sharing a band key.

    In each band the rows are sorted by key and each is paired with the next `max_bucket_span`
    rows of its bucket: all pairs of a bucket up to that size, and a chain through bigger ones
    (which the union-find then joins wherever the chain's pairs verify).
    """
    n, bands = keys.shape
    parts = []
    for band in range(bands):
        k = keys[:, band]
        order = np.argsort(k, kind="stable")
        sk = k[order]
        for d in range(1, max_bucket_span + 1):
            same = sk[d:] == sk[:-d]
            if not same.any():
                break
            i, j = order[:-d][same], order[d:][same]
            parts.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(parts).astype(np.int64)
    code = np.sort(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    code = code[np.concatenate([[True], code[1:] != code[:-1]])]  # each pair once (sorting beats np.unique's hashing here)
    return np.stack([code // n, code % n], axis=1)


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """The fraction of equal signature entries of each pair: MinHash's estimate of Jaccard similarity."""
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (signatures[p[:, 0]] == signatures[p[:, 1]]).mean(axis=1)
    return out


def connected_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Label of each of n nodes (the smallest node index in its group), by vectorized min-label propagation."""
    labels = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return labels
    i, j = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[i], labels[j])
        new = labels.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        new = new[new]  # pointer jumping: follow labels to their own label
        if np.array_equal(new, labels):
            return labels
        labels = new


def id_order(ids: list[str], pos: np.ndarray) -> np.ndarray:
    """Rank of each row under the module's rule: integer ids numerically first, then other ids as strings, then pos."""
    is_int = pc.match_substring_regex(pa.array(ids, pa.string()), r"^[+-]?\d+$").fill_null(False).to_numpy(zero_copy_only=False)
    as_int = np.array([int(i) if f else 0 for i, f in zip(ids, is_int)], dtype=object)
    as_str = np.array([("" if f else (i or "")) for i, f in zip(ids, is_int)], dtype=object)
    # Python ints and strings compare exactly (no overflow); sorting n keys once is cheap.
    order = sorted(range(len(ids)), key=lambda r: (not is_int[r], as_int[r], as_str[r], pos[r]))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(ids))
    return rank


def find_near_duplicates(
    keys: pa.Table,
    threshold: float = 0.8,
    bands: int = 16,
    max_bucket_span: int = 32,
) -> pa.Table:
    """Rows to reject as (pos, reason, detail) from (id, pos, minhash) rows: all but the smallest id of each group."""
    empty = LOSERS.empty_table()
    n = keys.num_rows
    if n < 2:
        return empty
    keys = keys.sort_by([(S.POS, "ascending")])  # the result must not depend on the order blocks arrived in
    col = keys.column(S.MINHASH).combine_chunks()
    num_perm = col.type.list_size
    signatures = col.values.to_numpy().reshape(n, num_perm)
    pairs = candidate_pairs(band_keys(signatures, bands), max_bucket_span)
    if len(pairs) == 0:
        return empty
    pairs = pairs[estimated_jaccard(signatures, pairs) >= threshold]
    # Group by the id order, so each group's label is its keeper.
    ids = keys.column(S.ID).to_pylist()
    pos = keys.column(S.POS).to_numpy()
    rank = id_order(ids, pos)
    by_rank = np.empty(n, dtype=np.int64)
    by_rank[rank] = np.arange(n)  # row index of each rank
    labels = connected_groups(n, rank[pairs])  # nodes are ranks: the smallest rank of a group is its label
    losers_rank = np.nonzero(labels != np.arange(n))[0]
    if len(losers_rank) == 0:
        return empty
    losers = by_rank[losers_rank]
    keepers = by_rank[labels[losers_rank]]
    return pa.table(
        {
            S.POS: pa.array(pos[losers], pa.int64()),
            S.REASON: pa.array([S.R_NEAR_DUP] * len(losers), pa.string()),
            S.DETAIL: pa.array([f"near duplicate of id {ids[k]}" for k in keepers], pa.string()),
        }
    )


def without_rejected(keys: pa.Table, rejected: pa.Table) -> pa.Table:
    """Keys of the rows a previous decision (exact dedup) has not rejected already."""
    if rejected.num_rows == 0:
        return keys
    return keys.filter(pc.invert(pc.is_in(keys.column(S.POS), value_set=rejected.column(S.POS))))


@dataclass
class NearDedup(Deduplicator):
    """Near-duplicate captions: MinHash over word shingles, LSH banding, groups joined; the smallest
    id of a group is kept (see the module's docstring)."""

    config_name: ClassVar[str] = "near_dup"
    name: ClassVar[str] = "near_dup"
    reasons: ClassVar[tuple[str, ...]] = (S.R_NEAR_DUP,)

    enabled: bool = False
    threshold: float = 0.8  # estimated Jaccard similarity at or above which two captions are near duplicates
    num_perm: int = 128  # MinHash functions per signature
    bands: int = 16  # LSH bands (must divide num_perm); more bands find lower similarities
    shingle_size: int = 1  # words per shingle: 1 suits short captions and catches reordering; 2-3 for long texts
    max_bucket_span: int = 32  # in an LSH bucket, each caption is compared with this many neighbours

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold <= 1:
            raise SettingError("threshold", f" must be in (0, 1], got {self.threshold}")
        if self.shingle_size < 1:
            raise SettingError("shingle_size", f" must be >= 1, got {self.shingle_size}")
        if self.num_perm < 1 or self.bands < 1 or self.num_perm % self.bands:
            raise SettingError("bands", f"={self.bands} must divide curate.near_dup.num_perm={self.num_perm}")
        if self.max_bucket_span < 1:
            raise SettingError("max_bucket_span", f" must be >= 1, got {self.max_bucket_span}")

    def key_columns(self, captions: list[str]) -> dict[str, pa.Array]:
        return {S.MINHASH: signature_column(captions, self.num_perm, self.shingle_size)} if self.enabled else {}

    def losers(self, keys: pa.Table) -> pa.Table:
        if not self.enabled:
            return LOSERS.empty_table()
        return find_near_duplicates(keys, self.threshold, self.bands, self.max_bucket_span)

    def shuffle_steps(self) -> list[NearStep]:
        return [NearStep(self.threshold, self.bands, self.max_bucket_span)] if self.enabled else []
