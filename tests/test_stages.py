"""The synthesis and scoring stages in a plain loop, as an actor would run them."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from factory import schema as S
from factory.score.tiny import TinyClipScorer
from factory.seeds import sample_seed
from factory.synth.diffusion import image_problem
from factory.synth.tiny import TinySDXL


@pytest.fixture(scope="module")
def synth():
    return TinySDXL(name="tiny", device="cpu", steps=2, guidance=5.0).loaded()


@pytest.fixture(scope="module")
def scorer():
    return TinyClipScorer(device="cpu", ssim_size=128, ssim_low=56).loaded()


def batch(ids, samples, caption="A lighthouse surrounded by fog near a busy harbor."):
    return {
        S.ID: np.array(ids, dtype=object),
        S.CAPTION: np.array([caption] * len(ids), dtype=object),
        S.SAMPLE: np.array(samples, np.int32),
        S.GENERATOR: np.array(["tiny"] * len(ids), dtype=object),
        S.SEED: np.array([sample_seed(0, i, s) for i, s in zip(ids, samples)], np.int64),
    }


def test_images_depend_on_seed_not_on_batching(synth):
    together = synth(batch(["a", "b", "c"], [0, 0, 1]))
    alone = synth(batch(["c"], [1]))
    assert together[S.IMAGE].shape == (3, 64, 64, 3) and together[S.IMAGE].dtype == np.uint8
    # the same batch again: the same pixels, exactly
    np.testing.assert_array_equal(synth(batch(["a", "b", "c"], [0, 0, 1]))[S.IMAGE], together[S.IMAGE])
    # the same (id, sample) alone or in a batch: the same latents; kernels of another batch size
    # may round differently (±1 level)
    assert np.abs(together[S.IMAGE][2].astype(int) - alone[S.IMAGE][0].astype(int)).max() <= 1
    # different seeds give different images
    assert np.abs(together[S.IMAGE][0].astype(int) - together[S.IMAGE][1].astype(int)).mean() > 1
    assert list(together[S.REASON]) == ["", "", ""]
    assert list(together[S.WIDTH]) == [64] * 3


def test_a_generator_makes_only_its_rows_and_passes_the_others_on(synth):
    """Several generators in one run are chained pools: each fills its own rows."""
    mixed = batch(["a", "b", "c"], [0, 0, 1])
    mixed[S.GENERATOR] = np.array(["tiny", "small", "tiny"], dtype=object)
    first = synth(mixed)
    assert [im.shape for im in first[S.IMAGE]] == [(64, 64, 3), (0, 0, 3), (64, 64, 3)]
    small = TinySDXL(name="small", device="cpu", steps=2, guidance=5.0, height=32, width=32)
    both = small(first)
    assert [im.shape for im in both[S.IMAGE]] == [(64, 64, 3), (32, 32, 3), (64, 64, 3)]
    assert list(both[S.WIDTH]) == [64, 32, 64] and list(both[S.REASON]) == ["", "", ""]
    own = synth(batch(["a", "c"], [0, 1]))  # the same rows alone: the same images (same batch size)
    np.testing.assert_array_equal(np.stack([both[S.IMAGE][0], both[S.IMAGE][2]]), own[S.IMAGE])
    alone = small(batch(["b"], [0]) | {S.GENERATOR: np.array(["small"], dtype=object)})
    np.testing.assert_array_equal(both[S.IMAGE][1], alone[S.IMAGE][0])


def test_bad_images_are_flagged():
    assert image_problem(np.zeros((4, 4, 3), np.uint8), True).startswith("a single colour")
    assert "NaN" in image_problem(np.zeros((4, 4, 3), np.uint8), False)
    assert image_problem(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), True) is None


def test_nan_output_is_recorded_not_scored(synth, scorer):
    class NanSynth(TinySDXL):
        def generate(self, prompts, seeds):
            out = torch.rand(len(prompts), 3, 8, 8)
            out[0] = float("nan")
            return out

    stage = NanSynth.__new__(NanSynth)
    stage.__dict__.update(synth.__dict__)
    out = stage(batch(["a", "b"], [0, 0]))
    assert list(out[S.REASON]) == [S.R_BAD_IMAGE, ""]
    scored = scorer(out)
    assert np.isnan(scored[S.SCORE][0]) and np.isfinite(scored[S.SCORE][1])


def test_clip_score_matches_open_clip_reference(synth, scorer):
    """Our torch preprocessing vs open_clip's own PIL transform and encoders."""
    out = synth(batch(["a", "b", "c", "d"], [0, 0, 0, 1]))
    out[S.CAPTION] = np.array(["A lighthouse near a harbor.", "Two dogs playing in the snow.", "A bowl of ramen", "red"],
                              dtype=object)
    scored = scorer(out)
    model, pre = scorer.clip.model, open_clip.create_model_and_transforms(
        "factory-tiny-clip", pretrained=None)[2]
    tok = open_clip.get_tokenizer("factory-tiny-clip")
    with torch.no_grad():
        img = torch.stack([pre(Image.fromarray(im)) for im in out[S.IMAGE]])
        fi = model.encode_image(img)
        ft = model.encode_text(tok(["A photo depicts " + c for c in out[S.CAPTION]]))
        cos = torch.nn.functional.cosine_similarity(fi, ft).numpy()
    assert (cos > 0.05).all()  # these pairs are above the floor, so the floor cannot hide a difference
    # PIL's and torch's bicubic resizes differ by ~3e-4 here; images fed as BGR are off by 0.02
    assert np.allclose(scored[S.CLIP_SCORE], np.maximum(cos, 0), rtol=0, atol=1e-3)
    assert np.allclose(scored[S.SCORE], scored[S.CLIP_SCORE] + 0.5 * scored[S.SSIM])
    assert ((scored[S.CLIP_SCORE] >= 0) & (scored[S.CLIP_SCORE] <= 1)).all()


def test_long_captions_are_truncated_for_encoders_only(synth, scorer):
    long_caption = "A very detailed scene of a harbor " * 40
    out = synth(batch(["long"], [0], caption=long_caption))
    scored = scorer(out)
    assert scored[S.CAPTION][0] == long_caption
    assert np.isfinite(scored[S.SCORE][0])
    # words past the encoders' 77 tokens do not count; words within them do
    other_tail = dict(out, **{S.CAPTION: np.array([long_caption + "and a purple elephant"], dtype=object)})
    other_head = dict(out, **{S.CAPTION: np.array(["A purple elephant " + long_caption], dtype=object)})
    assert scorer(other_tail)[S.CLIP_SCORE][0] == scored[S.CLIP_SCORE][0]
    assert scorer(other_head)[S.CLIP_SCORE][0] != scored[S.CLIP_SCORE][0]
