"""The tiny open_clip scorer with random weights: the embedded default (`scorer=tiny`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import open_clip
import torch
from open_clip.factory import _MODEL_CONFIGS
from safetensors.torch import save_file

from factory.cache import save_once, tiny_cache_dir
from factory.score.scorer import ClipSsimScorer
from factory.stage import GiB

TINY_SEED = 0

TINY_CLIP_NAME = "factory-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Make open_clip know the tiny architecture by name (as it knows 'ViT-L-14-336')."""
    if TINY_CLIP_NAME not in _MODEL_CONFIGS:
        _MODEL_CONFIGS[TINY_CLIP_NAME] = json.loads(json.dumps(TINY_CLIP_CONFIG))
    assert TINY_CLIP_NAME in open_clip.list_models()
    return TINY_CLIP_NAME


def ensure_tiny_clip(path: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Save a random-weight tiny open_clip checkpoint (safetensors) once, returning its path."""
    path = Path(path) if path else tiny_cache_dir() / f"tiny-clip-s{seed}" / "open_clip_model.safetensors"
    register_tiny_clip()

    def save(folder: Path) -> None:
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / path.name))

    save_once(path.parent, save)
    return path


@dataclass
class TinyClipScorer(ClipSsimScorer):
    """The embedded default scorer: a tiny open_clip architecture with random weights, saved once
    per node and loaded through open_clip's `pretrained=` like any local checkpoint."""

    config_name: ClassVar[str] = "tiny_clip"
    weights_bytes: ClassVar[int] = GiB // 16

    arch: str = TINY_CLIP_NAME
    device: str = "cpu"

    def checkpoint(self) -> tuple[str, str | None]:
        register_tiny_clip()
        return self.arch, self.pretrained or str(ensure_tiny_clip())
