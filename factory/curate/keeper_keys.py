"""Keeper keys: one binary value per row that sorts, byte by byte, exactly as `near_dup.id_order` ranks rows.

The near-duplicate rule keeps a group's smallest id: integer ids ("7", "-3", "0012") numerically
first, then other ids as strings by code point, then input order (`pos`). Ranking all rows needs a
global sort; a key per row makes a group's keeper the group's minimum, which any worker can take
locally. The key also carries the row's `pos` and its id, so the loser's pos and the keeper's id
read back from the keys alone:

    class (1 byte: 0 negative int, 1 other int, 2 string)
    | ints: digit count (4 bytes, complemented for negatives) and the digits (complemented for negatives)
    | strings: UTF-8 with 0x00 escaped as 0x00 0xFF, then 0x00 0x00 (so "a" < "a\\0" < "ab")
    | pos (8 bytes, big-endian, sign bit flipped) | the raw id | its length (4 bytes; 0xFFFFFFFF = null id)
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INT_ID = r"^[+-]?\d+$"  # the integer ids of near_dup.id_order
_NULL_ID = 0xFFFFFFFF
_SIGN = np.uint64(1 << 63)


def _fixed(values: np.ndarray) -> pa.Array:
    """Big-endian bytes of each value of a numpy integer array, as a binary array."""
    raw = np.ascontiguousarray(values.astype(values.dtype.newbyteorder(">")))
    width = raw.dtype.itemsize
    return pc.cast(pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw.tobytes())]), pa.binary())


def _complement(digits: list[bytes]) -> list[bytes]:
    return [d.translate(bytes.maketrans(b"0123456789", b"9876543210")) for d in digits]


def _int_parts(ids: pa.Array, is_int: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(class, digit count field, digits) of integer ids; placeholders on the other rows."""
    digits = pc.cast(pc.utf8_ltrim(pc.utf8_ltrim(ids.fill_null(""), "+-"), "0"), pa.binary())  # "" for zero
    length = pc.binary_length(digits).to_numpy(zero_copy_only=False).astype(np.uint32)
    neg = is_int & pc.starts_with(ids.fill_null(""), "-").to_numpy(zero_copy_only=False) & (length > 0)
    klass = np.where(is_int, np.where(neg, 0, 1), 2).astype(np.uint8)
    length = np.where(neg, np.uint32(_NULL_ID) - length, length).astype(np.uint32)
    if neg.any():
        values = digits.to_pylist()
        flipped = _complement([values[i] for i in np.flatnonzero(neg)])
        for i, v in zip(np.flatnonzero(neg), flipped):
            values[i] = v
        digits = pa.array(values, pa.binary())
    return _fixed(klass), _fixed(length), digits


def keeper_keys(ids: pa.Array, pos: np.ndarray) -> pa.Array:
    """Binary keys of rows (id, pos): key order == (not is_int, int value, string, pos) of near_dup.id_order."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(ids)
    if n == 0:
        return pa.array([], pa.binary())
    is_int = pc.match_substring_regex(ids, INT_ID).fill_null(False).to_numpy(zero_copy_only=False)
    klass, length, digits = _int_parts(ids, is_int)
    raw = pc.cast(ids.fill_null(""), pa.binary())
    text = pc.binary_join_element_wise(pc.replace_substring(raw, b"\x00", b"\x00\xff"), pa.scalar(b"\x00\x00"), b"")
    isint = pa.array(is_int)
    order = pc.binary_join_element_wise(
        klass, pc.if_else(isint, length, b""), pc.if_else(isint, digits, text),
        _fixed(np.asarray(pos, dtype=np.int64).view(np.uint64) ^ _SIGN), b"")
    raw_len = np.where(pc.is_null(ids).to_numpy(zero_copy_only=False), _NULL_ID,
                       pc.binary_length(raw).to_numpy(zero_copy_only=False)).astype(np.uint32)
    return pc.binary_join_element_wise(order, raw, _fixed(raw_len), b"")


def key_pos_id(key: bytes) -> tuple[int, str | None]:
    """(pos, id) of the row a keeper key was made from."""
    n = int.from_bytes(key[-4:], "big")
    size = 0 if n == _NULL_ID else n
    raw = key[len(key) - 4 - size : len(key) - 4]
    pos = (int.from_bytes(key[len(key) - 12 - size : len(key) - 4 - size], "big") ^ (1 << 63))
    pos = pos - (1 << 64) if pos >= 1 << 63 else pos
    return pos, (None if n == _NULL_ID else raw.decode())
