"""The scoring stage: CLIPScore + λ·SSIM for every generated sample, on the actor's device."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from factory import schema as S
from factory.checks import number
from factory.devices import resolve_device, torch_dtype
from factory.errors import SettingError
from factory.retry import run_in_halves
from factory.score.clip import ClipScore
from factory.score.ssim import round_trip_ssim
from factory.score.upload import HostToDevice
from factory.stage import PROCESS_BYTES, GiB, Resources, Stage
from factory.weights import check_weight_file


def shape_groups(images, rows: list[int]) -> list[list[int]]:
    """`rows` grouped by the shape of their image, each group in row order."""
    groups: dict[tuple, list[int]] = {}
    for i in rows:
        groups.setdefault(np.shape(images[i]), []).append(i)
    return list(groups.values())


def stack_rows(images, rows: list[int]) -> np.ndarray:
    """The images of `rows` (all of one shape) as one (n,H,W,3) array."""
    if isinstance(images, np.ndarray) and images.dtype != object:
        return images[rows]
    return np.stack([images[i] for i in rows])


@dataclass
class ClipSsimScorer(Stage):
    """Stage: batch with image (uint8 N×H×W×3), caption, reason → + clip_score, ssim, score.

    Samples that synthesis marked unusable get no scores (NaN) and are never selected; their images
    are never read. A score that comes out NaN or infinite marks its sample unusable (bad_score).
    Ray may hand over blocks merged from several synthesis batches, whose image column is then an
    object array of per-row images: usable rows are scored in groups of one shape.
    Images reach the device `chunk_size` at a time (None: the whole batch), so the host copy of one
    chunk overlaps the device work on the one before. With `compile`, CLIP's image path and the SSIM
    round trip run as torch.compile graphs at one fixed shape: chunks are padded to `chunk_size`.
    """

    config_name: ClassVar[str] = "clip"
    pool: ClassVar[str] = "score"
    batch_format: ClassVar[str] = "numpy"
    needs: ClassVar[Resources] = Resources(cpus=0.5, gpus=0.25, gpu_share=0.25, threads=1)
    reasons: ClassVar[tuple[str, ...]] = (S.R_BAD_SCORE, S.R_OOM)
    speed_only: ClassVar[frozenset[str]] = frozenset({"device", "chunk_size", "compile", "compile_mode", "batch_size"})
    weights_bytes: ClassVar[int] = GiB  # ViT-L/14-336 in fp16 is 0.86 GB

    name: str = "scorer"
    arch: str = "ViT-B-32"  # an open_clip architecture name
    pretrained: Optional[str] = None  # a tag ('openai'), a hub id or a local checkpoint file
    device: str = "auto"
    dtype: str = "float32"
    lam: float = 0.5
    prefix: str = "A photo depicts "
    ssim_size: int = 768
    ssim_low: int = 336
    chunk_size: Optional[int] = None  # images per device step (null: the whole batch)
    compile: bool = False
    compile_mode: str = "default"
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        number("chunk_size", self.chunk_size, whole=True, low=1, nullable=True)
        if self.compile and not self.chunk_size:
            raise SettingError("compile", "=true needs scorer.chunk_size: the compiled graphs are built for one batch shape")
        torch_dtype(self.dtype, "scorer.dtype")
        if self.pretrained:
            check_weight_file(self.pretrained, "pretrained")

    def label(self) -> str:
        return f"score_{self.name}"

    def checkpoint(self) -> tuple[str, str | None]:
        """(open_clip architecture, pretrained) to load; a family of scorers may build its own."""
        return self.arch, self.pretrained

    def memory_bytes(self) -> int:
        local = self.pretrained if self.pretrained and os.path.isfile(self.pretrained) else None
        weights = os.path.getsize(local) if local else self.weights_bytes
        return int(PROCESS_BYTES + weights + self.batch_size * 1024 * 1024 * 3 * 4)

    def setup(self) -> None:
        self._device = resolve_device(self.device, key="scorer.device")
        arch, pretrained = self.checkpoint()
        self.clip = ClipScore(arch, pretrained, self._device, self.dtype, self.prefix, compile=self.compile,
                              compile_mode=self.compile_mode)
        self.upload = HostToDevice(self._device)
        self.pad = self.compile
        self._ssim = round_trip_ssim
        if self.compile:
            self._ssim = torch.compile(round_trip_ssim, mode=self.compile_mode, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def score(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """CLIPScores and SSIMs of uint8 (n,H,W,3) images; one wait for the device, at the end."""
        n = len(images)
        step = self.chunk_size or n
        features, ssims = [], []
        for a in range(0, n, step):
            m = min(step, n - a)
            x = self.upload(images[a : a + m], pad_to=step if self.pad else None)
            # Cloned: a CUDA-graph compile mode reuses its output memory on the next chunk.
            features.append(self.clip.image_features(x)[:m].clone())
            ssims.append(self._ssim(x, self.ssim_size, self.ssim_low)[:m].clone())
        clip = self.clip.scores(torch.cat(features), captions)  # tokenised while the chunks run
        return clip.cpu().numpy().astype(np.float64), torch.cat(ssims).cpu().numpy().astype(np.float64)

    def _after_oom(self) -> None:
        # Padding back up to the compiled chunk would run out of memory again: from now on chunks
        # are halved and run at their own size (compiled once more for each new shape).
        self.pad = False
        if self.chunk_size:
            self.chunk_size = max(1, self.chunk_size // 2)
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

    def process(self, batch: dict) -> dict:
        n = len(batch[S.CAPTION])
        reasons = [str(r) for r in batch.get(S.REASON, [""] * n)]  # "" = usable
        details = [str(d) for d in batch.get(S.DETAIL, [""] * n)]
        ok = [i for i in range(n) if not reasons[i]]
        clip = np.full(n, np.nan)
        ssim = np.full(n, np.nan)
        captions = [str(c) for c in batch[S.CAPTION]]
        images = batch[S.IMAGE]

        def run(idx):
            c, s = self.score(stack_rows(images, idx), [captions[i] for i in idx])
            return list(zip(c, s))

        for group in shape_groups(images, ok):
            results, _ = run_in_halves(run, group, on_oom=self._after_oom)
            for i, r in zip(group, results):
                if r is None:
                    reasons[i], details[i] = S.R_OOM, "scoring ran out of device memory even alone"
                else:
                    clip[i], ssim[i] = r
                    if not (np.isfinite(clip[i]) and np.isfinite(ssim[i])):  # e.g. an fp16 overflow in a tower
                        reasons[i], details[i] = S.R_BAD_SCORE, f"clip_score {clip[i]}, ssim {ssim[i]}"
        out = dict(batch)
        out[S.CLIP_SCORE] = clip
        out[S.SSIM] = ssim
        out[S.SCORE] = clip + self.lam * ssim
        out[S.REASON] = np.array(reasons, dtype=object)
        out[S.DETAIL] = np.array(details, dtype=object)
        return out
