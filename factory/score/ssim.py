"""SSIM as SynthVLM computes it, in torch on any device.

SynthVLM resizes the image to 768² and compares it, in grayscale, with its own 768→336→768
round trip (PIL bilinear), using scikit-image's `structural_similarity` defaults: 7×7 uniform
window, sample covariance, data range 255. Every step is mirrored here, uint8 rounding included.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import box_blur

K1, K2, WIN = 0.01, 0.03, 7


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """PIL-like bilinear resize (antialiased when shrinking) of (N,C,H,W) 0..255 floats, rounded as uint8."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's 'L' conversion, bit for bit: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16."""
    r, g, b = x[:, 0].long(), x[:, 1].long(), x[:, 2].long()
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(x.dtype)


def ssim_gray(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Mean SSIM per image of (N,H,W) grayscale tensors, equal to skimage's defaults."""
    a = a.double().unsqueeze(1)
    b = b.double().unsqueeze(1)
    pad = (WIN - 1) // 2

    def mean(t):  # uniform filter; the border skimage crops away is dropped
        return box_blur(t, (WIN, WIN), border_type="reflect")[..., pad:-pad, pad:-pad]

    ux, uy = mean(a), mean(b)
    uxx, uyy, uxy = mean(a * a), mean(b * b), mean(a * b)
    cov_norm = WIN * WIN / (WIN * WIN - 1)  # sample covariance
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def round_trip_ssim(images: torch.Tensor, size: int = 768, low: int = 336) -> torch.Tensor:
    """SSIM of (N,H,W,3) uint8 images against their size→low→size round trip, in grayscale."""
    x = images.permute(0, 3, 1, 2).float()
    hi = resize_uint8(x, size)
    back = resize_uint8(resize_uint8(hi, low), size)
    return ssim_gray(to_gray(hi), to_gray(back)).float()
