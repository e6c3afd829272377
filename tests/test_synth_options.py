"""DiffusionSynth built from disk and from an in-memory pipeline agree; padding to the compiled
batch size never changes an image (one generator per sample)."""
from __future__ import annotations

import numpy as np

from factory import schema as S
from factory.synth.diffusion import DiffusionSynth, load_text_to_image


def _batch(n):
    return {S.ID: np.array([f"c{i}" for i in range(n)], dtype=object),
            S.CAPTION: np.array([f"a red house number {i}" for i in range(n)], dtype=object),
            S.SAMPLE: np.zeros(n, np.int32), S.SEED: np.arange(100, 100 + n, dtype=np.int64)}


def test_from_pipeline_matches_constructor_and_padding_keeps_images():
    opts = dict(steps=2, guidance=5.0)
    loaded = DiffusionSynth(path="tiny", device="cpu", **opts)
    built = DiffusionSynth.from_pipeline(load_text_to_image("tiny", "float32", "cpu"), device="cpu", **opts)
    a = loaded(_batch(3))
    b = built(_batch(3))
    assert a[S.IMAGE].dtype == np.uint8 and a[S.IMAGE].shape[0] == 3
    np.testing.assert_array_equal(a[S.IMAGE], b[S.IMAGE])
    built.pad_to = 5  # what compile=True with batch_size=5 sets: short batches are padded
    padded = built(_batch(3))
    assert padded[S.IMAGE].shape == a[S.IMAGE].shape
    np.testing.assert_allclose(padded[S.IMAGE].astype(int), a[S.IMAGE].astype(int), atol=1)
