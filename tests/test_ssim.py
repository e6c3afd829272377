"""SSIM in torch against scikit-image, and the whole round trip against SynthVLM's PIL + skimage code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from factory.score.ssim import resize_uint8, resize_via_float, round_trip_ssim, ssim_gray, to_gray


def _pairs(rng, n, h, w):
    a = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
    noise = rng.integers(-40, 41, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    b[0] = a[0]  # identical pair: SSIM exactly 1
    b[-1] = 255 - a[-1]  # inverted: strongly negative
    return a, b


@pytest.mark.parametrize("shape", [(3, 64, 80), (2, 7, 7), (2, 128, 129)])
def test_ssim_gray_equals_skimage_on_grey_levels(shape):
    a, b = _pairs(np.random.default_rng(1), *shape)
    ours = ssim_gray(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = np.array([structural_similarity(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    assert ours[0] == pytest.approx(1.0)


def test_ssim_gray_non_integer_input_uses_float64_path():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 255, (2, 40, 50))
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255)
    ours = ssim_gray(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = np.array([structural_similarity(x, y, data_range=255.0) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_ssim_gray_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="ssim_gray"):
        ssim_gray(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))


def synthvlm_ssim(image: np.ndarray, size: int = 768, low: int = 336) -> float:
    """SynthVLM's code path: PIL bilinear resizes, PIL 'L' grey, scikit-image defaults."""
    hi = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    back = hi.resize((low, low), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    return float(structural_similarity(np.array(hi.convert("L")), np.array(back.convert("L"))))


def _photo_like(rng, n, h, w):
    """Smooth colour fields with edges and grain: closer to generated images than white noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        f = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(f[c] * xx + rng.uniform(0, 6) + f[(c + 1) % 3] * yy) for c in range(3)], -1)
        edges = (np.sin(rng.uniform(20, 60) * xx) > 0.7)[..., None] * 0.4
        img = 127 + 90 * base + 60 * edges + rng.normal(0, 8, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)  # as round_trip_ssim lays them out


def _pil_resize(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.array(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


# SDXL's 1024², the tiny model's 64² and a non-square size; then the round trip's own two steps.
@pytest.mark.parametrize("h,w,size", [(1024, 1024, 768), (64, 64, 768), (512, 640, 768), (768, 768, 336), (336, 336, 768)])
def test_cpu_resize_is_pil_bilinear_pixel_for_pixel(h, w, size):
    images = _photo_like(np.random.default_rng(4), 2, h, w)
    ours = resize_uint8(_nchw(images), size)
    assert ours.dtype == torch.uint8
    np.testing.assert_array_equal(ours.permute(0, 2, 3, 1).numpy(), _pil_resize(images, size))


def test_to_gray_is_pil_L():
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    pixels[0, 0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3], [128, 128, 127], [254, 1, 255]]
    ref = np.array(Image.fromarray(pixels[0]).convert("L"))
    np.testing.assert_array_equal(to_gray(_nchw(pixels))[0].numpy(), ref)


@pytest.mark.parametrize("h,w", [(1024, 1024), (512, 640), (64, 64)])
def test_round_trip_matches_synthvlm_reference(h, w):
    images = _photo_like(np.random.default_rng(3), 2, h, w)
    ours = round_trip_ssim(torch.from_numpy(images)).numpy()
    ref = np.array([synthvlm_ssim(im) for im in images])
    # Every pixel is PIL's (above), so only the float32 result rounds (≤ 6e-8 below 1).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert np.all((ours > 0) & (ours < 1))


def test_float_resize_used_off_cpu_is_close_not_exact():
    """The path CUDA takes (no uint8 kernel there), run on CPU: ±1 level, SSIM about 1e-3 off."""
    images = _photo_like(np.random.default_rng(6), 2, 1024, 1024)
    hi = resize_via_float(_nchw(images), 768).permute(0, 2, 3, 1).numpy()
    diff = np.abs(hi.astype(int) - _pil_resize(images, 768).astype(int))
    assert diff.max() == 1 and 0.1 < (diff > 0).mean() < 0.4

    x = _nchw(images)
    hi = resize_via_float(x, 768)
    back = resize_via_float(resize_via_float(hi, 336), 768)
    ours = ssim_gray(to_gray(hi), to_gray(back)).numpy()
    ref = np.array([synthvlm_ssim(im) for im in images])
    assert np.abs(ours - ref).max() <= 2e-3
