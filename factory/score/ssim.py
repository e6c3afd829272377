"""SSIM as SynthVLM computes it, in torch on any device.

SynthVLM resizes the image to 768² and compares it, in grayscale, with its own 768→336→768
round trip (PIL bilinear), using scikit-image's `structural_similarity` defaults: 7×7 uniform
window, sample covariance, data range 255. Every step is mirrored here, uint8 rounding included.

Speed: the 7×7 window sums are taken separably (1×7 then 7×1 sum-pooling) over only the 'valid'
positions, which are exactly the ones scikit-image keeps after cropping its reflect-padded border.
For integer grey levels (what the round trip produces) every window sum is an integer below 2²⁴,
so float32 holds it exactly; only the final per-pixel formula runs in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

K1, K2, WIN = 0.01, 0.03, 7
NP = WIN * WIN


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """PIL-like bilinear resize (antialiased when shrinking) of (N,C,H,W) 0..255 floats, rounded as uint8."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's 'L' conversion, bit for bit: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16."""
    r, g, b = x[:, 0].int(), x[:, 1].int(), x[:, 2].int()  # < 2³¹: int32 is enough
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(x.dtype)


def _run_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of WIN consecutive entries along `dim` (valid positions only): WIN−1 in-place adds,
    which on CPU beat avg_pool2d several times over."""
    n = t.shape[dim] - WIN + 1
    out = t.narrow(dim, 0, n).clone()
    for k in range(1, WIN):
        out.add_(t.narrow(dim, k, n))
    return out


def window_sums(t: torch.Tensor) -> torch.Tensor:
    """Sum over every full 7×7 window of (..., H, W) → (..., H-6, W-6), separably."""
    return _run_sum(_run_sum(t, -1), -2)


def ssim_gray(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0, integral: bool | None = None) -> torch.Tensor:
    """Mean SSIM per image of (N,H,W) grayscale tensors, equal to skimage's defaults.

    `integral`: whether both hold whole grey levels 0..255 (None: find out, which waits for the
    device; callers that know, like the round trip, say so and keep the work queued).
    """
    if a.shape != b.shape or a.dim() != 3 or min(a.shape[-2:]) < WIN:
        raise ValueError(f"ssim_gray needs two (N,H,W) tensors with H,W ≥ {WIN}, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    if integral is None:
        integral = bool(torch.equal(a, a.round()) and torch.equal(b, b.round()) and a.abs().max() < 256 and b.abs().max() < 256)
    acc = torch.float32 if integral else torch.float64  # integer sums < 2²⁴ are exact in float32
    a, b = a.to(acc), b.to(acc)
    s = window_sums(torch.stack([a, b, a * a, b * b, a * b], dim=1)).double()
    sx, sy, sxx, syy, sxy = s.unbind(1)
    # skimage's formula with every term multiplied out by 49² (means) or 49·48 (sample covariances).
    c1 = (K1 * data_range) ** 2 * NP * NP
    c2 = (K2 * data_range) ** 2 * NP * (NP - 1)
    dxy = NP * sxy - sx * sy
    dx = NP * sxx - sx * sx
    dy = NP * syy - sy * sy
    ssim = ((2 * sx * sy + c1) * (2 * dxy + c2)) / ((sx * sx + sy * sy + c1) * (dx + dy + c2))
    return ssim.flatten(1).mean(dim=1)


def round_trip_ssim(images: torch.Tensor, size: int = 768, low: int = 336) -> torch.Tensor:
    """SSIM of (N,H,W,3) uint8 images against their size→low→size round trip, in grayscale."""
    x = images.permute(0, 3, 1, 2).float()
    hi = resize_uint8(x, size)
    back = resize_uint8(resize_uint8(hi, low), size)
    return ssim_gray(to_gray(hi), to_gray(back), integral=True).float()  # rounded to 0..255 above
