"""SSIM as SynthVLM computes it, in torch on any device.

SynthVLM resizes the image to 768² and compares it, in grayscale, with its own 768→336→768
round trip (PIL bilinear on uint8, then PIL "L"), using scikit-image's `structural_similarity`
defaults: 7×7 uniform window, sample covariance, data range 255. Every step is mirrored here.

On CPU the resizes run torch's uint8 kernel, Pillow-SIMD's algorithm (fixed-point weights,
horizontal pass first, uint8 between the passes): pixel for pixel equal to `Image.resize(BILINEAR)`
from 1024², 64² and 512×640 to 768² and for 768→336→768 (x86: AVX-512, AVX2 and generic kernels),
so the SSIM equals the PIL + scikit-image reference up to the float32 rounding of the result
(tests/test_ssim.py). Measured caveats: for some other input sizes (2048², 333×517) up to one
pixel in 10³ is one level off (likely its 16-bit weights against Pillow's 22-bit); and Pillow ≥ 13 runs
the vertical pass first when the height shrinks much more than the width (1536×1024 → 768²: a
fifth of the pixels ±1 between the two orders; this module keeps the horizontal-first order).
CUDA has no uint8 kernel for this resize, so there it runs in float32, rounded once at the end:
about a quarter of the pixels ±1 and an SSIM about 1e-3 off the reference (at most 1.2e-3 on
the images measured, with this path on CPU; not measured on a GPU).

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
    """PIL's bilinear resize (antialiased when shrinking) of (N,C,H,W) uint8 images to size², as uint8."""
    if x.shape[-2:] == (size, size):
        return x
    if x.device.type == "cpu":
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resize_via_float(x, size)


def resize_via_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """The same resize in float32, rounded once at the end: for devices without the uint8 kernel."""
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's 'L' conversion of (N,3,H,W), bit for bit: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16."""
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
    x = images.permute(0, 3, 1, 2)  # channels-last strides, which the uint8 kernel takes as they are
    hi = resize_uint8(x, size)
    back = resize_uint8(resize_uint8(hi, low), size)
    return ssim_gray(to_gray(hi), to_gray(back), integral=True).float()  # uint8 grey levels
