"""A Bloom filter over an int64 column of a materialized dataset, built and used on the workers.

A join whose one side is small (pair endpoints) and whose other side is every row (signatures)
needs only the rows the small side names: the big side's map tasks drop the rows the filter rules
out before the shuffle, and the join stays exact (a false positive only travels for nothing).
The driver holds the filter's object reference, never its bits.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

HASHES = 3
BITS_PER_VALUE = 16  # 3 hashes, 16 bits a value: about 0.5% false positives
_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def _slots(values: np.ndarray, log2_bits: int) -> np.ndarray:
    """(HASHES, n) bit positions of each value: multiply-shift hashing."""
    with np.errstate(over="ignore"):
        return (values.astype(np.int64).view(np.uint64)[None, :] * _MULT[:, None]) >> np.uint64(64 - log2_bits)


def _size(n: int) -> int:
    return max(10, int(np.ceil(np.log2(max(1, n) * BITS_PER_VALUE))))


@ray.remote
def _block_bits(block: pa.Table, column: str, log2_bits: int) -> np.ndarray:
    bits = np.zeros(1 << log2_bits, dtype=bool)
    if block.num_rows:
        bits[_slots(block.column(column).to_numpy(), log2_bits).reshape(-1)] = True
    return np.packbits(bits)


@ray.remote
def _union(*parts: np.ndarray) -> np.ndarray:
    return np.bitwise_or.reduce(np.stack(parts), axis=0)


def build(ds, column: str, fan_in: int = 8) -> tuple[ray.ObjectRef, int]:
    """(reference to the filter's bits, log2 of its size) for the values of `column` in materialized `ds`."""
    log2_bits = _size(ds.count())
    level = [_block_bits.remote(ref, column, log2_bits) for ref in ds.to_arrow_refs()] or [_block_bits.remote(pa.table({column: pa.array([], pa.int64())}), column, log2_bits)]
    while len(level) > 1:
        level = [_union.remote(*level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0], log2_bits


def may_contain(packed: np.ndarray, log2_bits: int, values: np.ndarray) -> np.ndarray:
    """Per value: False where it was surely not among the filter's values."""
    slots = _slots(values, log2_bits)
    bits = (packed[slots >> np.uint64(3)] >> (np.uint64(7) - (slots & np.uint64(7))).astype(np.uint8)) & 1
    return bits.all(axis=0)
