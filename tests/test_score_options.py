"""The scorer's speed options never change a score: chunked uploads, padding to the compiled shape,
and torch.compile of CLIP's image path and of the SSIM round trip, against the plain eager scorer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.errors import SettingError
from factory.score.tiny import TinyClipScorer
from factory.score.ssim import round_trip_ssim
from factory.score.upload import HostToDevice

OPTS = dict(device="cpu", ssim_size=128, ssim_low=56)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    images[3] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None]  # a smooth image: SSIM near 1
    return images, [f"a red house with {i} windows" for i in range(5)]


@pytest.fixture(scope="module")
def plain(pairs):
    return TinyClipScorer(**OPTS).loaded().score(*pairs)


def test_chunks_do_not_change_scores(pairs, plain):
    clip, ssim = TinyClipScorer(**OPTS, chunk_size=2).loaded().score(*pairs)  # chunks of 2, 2 and 1
    np.testing.assert_allclose(clip, plain[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ssim, plain[1])
    assert ssim[3] > 0.9 and ssim[0] < 0.5  # smooth survives the round trip; noise does not


def test_compiled_scorer_matches_eager_with_padded_chunks(pairs, plain):
    scorer = TinyClipScorer(**OPTS, chunk_size=2, compile=True).loaded()
    clip, ssim = scorer.score(*pairs)  # the last chunk (1 image) is padded to the compiled 2
    np.testing.assert_allclose(clip, plain[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(ssim, plain[1], rtol=0, atol=1e-9)
    # The padded rows were zeros and were dropped: scoring the last image alone agrees.
    alone = TinyClipScorer(**OPTS).loaded().score(pairs[0][4:], pairs[1][4:])
    np.testing.assert_allclose(clip[4], alone[0][0], atol=1e-5)
    scorer._after_oom()  # after an OOM no padding, and smaller chunks
    assert scorer.pad is False and scorer.chunk_size == 1


def test_compile_needs_a_chunk_size():
    with pytest.raises(SettingError, match="chunk_size"):
        TinyClipScorer(**OPTS, compile=True)  # before anything loads


def test_upload_pads_with_zero_rows():
    images = np.full((3, 4, 4, 3), 7, np.uint8)
    x = HostToDevice("cpu")(images, pad_to=5)
    assert x.shape == (5, 4, 4, 3) and x.dtype == torch.uint8
    assert x[:3].eq(7).all() and x[3:].eq(0).all()


def test_round_trip_ssim_skips_the_integrality_check_but_agrees_with_it():
    from factory.score.ssim import resize_uint8, ssim_gray, to_gray

    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))
    x = images.permute(0, 3, 1, 2)
    hi = resize_uint8(x, 32)
    back = resize_uint8(resize_uint8(hi, 16), 32)
    checked = ssim_gray(to_gray(hi), to_gray(back))  # finds out itself that the levels are whole
    torch.testing.assert_close(round_trip_ssim(images, 32, 16), checked.float(), rtol=0, atol=0)


def test_upload_refuses_rows_of_different_shapes_with_a_clear_error():
    rows = np.empty(2, dtype=object)  # what Ray hands over for a column of differently shaped images
    rows[0], rows[1] = np.zeros((4, 4, 3), np.uint8), np.zeros((1, 1, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8 array, got object"):
        HostToDevice("cpu")(rows)


def test_scorer_device_error_names_scorer_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"^scorer\.device=cuda:1 but this worker sees no CUDA device$"):
        TinyClipScorer(**{**OPTS, "device": "cuda:1"}).loaded()


def test_repeated_captions_are_encoded_once_with_the_same_scores(pairs, monkeypatch):
    """With synth.repeat = N every caption comes N times: the text tower sees each once."""
    scorer = TinyClipScorer(**OPTS).loaded()
    images, captions = pairs
    repeated = [captions[i // 2] for i in range(5)]  # 0,0,1,1,2
    seen = []
    encode = scorer.clip.model.encode_text
    monkeypatch.setattr(scorer.clip.model, "encode_text", lambda t: seen.append(len(t)) or encode(t))
    clip, _ = scorer.score(images, repeated)
    assert seen == [3]
    monkeypatch.undo()
    for i, c in enumerate(repeated):  # each pair scored alone, text tower and all
        alone, _ = scorer.score(images[i : i + 1], [c])
        np.testing.assert_allclose(clip[i], alone[0], rtol=0, atol=1e-6)
