"""Deterministic per-sample seeds: the same (seed, id, sample) gives the same initial latents on any worker."""
from __future__ import annotations

import hashlib


def sample_seed(base_seed: int, caption_id: str, sample: int) -> int:
    digest = hashlib.blake2b(f"{base_seed}\x1f{caption_id}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
