"""The per-node cache of built models (tiny models, tokenizers): built once, never half-written."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_once(folder: Path, save) -> Path:
    """Save into `folder` unless a complete copy is there; concurrent callers never see half a copy."""
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    save(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.rename(tmp, folder)
    except OSError:  # another process won the race: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_cache_dir() -> Path:
    return Path(os.environ.get("FACTORY_CACHE", Path.home() / ".cache" / "synth-factory"))
