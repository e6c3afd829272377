"""The scoring stage: CLIPScore + λ·SSIM for every generated sample, on the actor's device."""
from __future__ import annotations

import time

import numpy as np
import torch

from factory import schema as S
from factory.retry import run_in_halves
from factory.score.clip import ClipScore
from factory.score.ssim import round_trip_ssim
from factory.synth.diffusion import resolve_device


class ClipSsimScorer:
    """Stage: batch with image (uint8 N×H×W×3), caption, reason → + clip_score, ssim, score.

    Samples that synthesis marked unusable get no scores (NaN) and are never selected.
    """

    def __init__(
        self,
        arch: str = "tiny",
        pretrained: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        lam: float = 0.5,
        prefix: str = "A photo depicts ",
        ssim_size: int = 768,
        ssim_low: int = 336,
        torch_threads: int | None = None,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.clip = ClipScore(arch, pretrained, self.device, dtype, prefix)
        self.lam, self.ssim_size, self.ssim_low = lam, ssim_size, ssim_low

    def score(self, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        clip = self.clip(x, captions)
        ssim = round_trip_ssim(x, self.ssim_size, self.ssim_low)
        return clip.cpu().numpy().astype(np.float64), ssim.cpu().numpy().astype(np.float64)

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        n = len(batch[S.CAPTION])
        reasons = [str(r) for r in batch.get(S.REASON, [""] * n)]  # "" = usable
        details = [str(d) for d in batch.get(S.DETAIL, [""] * n)]
        ok = [i for i in range(n) if not reasons[i]]
        clip = np.full(n, np.nan)
        ssim = np.full(n, np.nan)
        captions = [str(c) for c in batch[S.CAPTION]]

        def run(idx):
            c, s = self.score(batch[S.IMAGE][idx], [captions[i] for i in idx])
            return list(zip(c, s))

        if ok:
            results, _ = run_in_halves(run, ok, on_oom=lambda: torch.cuda.empty_cache() if self.device.startswith("cuda") else None)
            for i, r in zip(ok, results):
                if r is None:
                    reasons[i], details[i] = S.R_OOM, "scoring ran out of device memory even alone"
                else:
                    clip[i], ssim[i] = r
        out = dict(batch)
        out[S.CLIP_SCORE] = clip
        out[S.SSIM] = ssim
        out[S.SCORE] = clip + self.lam * ssim
        out[S.REASON] = np.array(reasons, dtype=object)
        out[S.DETAIL] = np.array(details, dtype=object)
        out["_score_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        return out
