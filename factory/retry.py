"""Run a batch in halves when the device runs out of memory, down to single items."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def is_oom(exc: BaseException) -> bool:
    try:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def run_in_halves(fn: Callable[[Sequence[int]], list], indices: Sequence[int], on_oom: Callable[[], None] | None = None):
    """fn(indices) → one result per index; on OOM split the indices in half and retry.

    Returns (results, failed): results[i] is None for an index that ran out of memory alone.
    """
    indices = list(indices)
    try:
        return list(fn(indices)), []
    except Exception as exc:
        if not is_oom(exc):
            raise
        if on_oom is not None:
            on_oom()
        if len(indices) == 1:
            return [None], indices
    mid = len(indices) // 2
    left, lf = run_in_halves(fn, indices[:mid], on_oom)
    right, rf = run_in_halves(fn, indices[mid:], on_oom)
    return left + right, lf + rf
