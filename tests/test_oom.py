"""A batch that runs out of device memory is retried in halves; a sample that fails alone gets a reason."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from factory import schema as S
from factory.engine import adapter
from factory.engine.placement import Placement
from factory.score.tiny import TinyClipScorer
from factory.synth.tiny import TinySDXL
from factory.seeds import sample_seed

POISON = "poison"  # a caption that runs out of memory even alone


def oom(n: int) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for a batch of {n}")


def small_device(calls: list, texts) -> None:
    """Records a call; the device holds at most 2 samples, and never the poisoned caption."""
    calls.append(list(texts))
    if len(texts) > 2 or any(POISON in t for t in texts):
        raise oom(len(texts))


class OomSynth(TinySDXL):
    calls: list

    def generate(self, prompts, seeds):
        small_device(self.calls, prompts)
        return super().generate(prompts, seeds)


class OomScorer(TinyClipScorer):
    calls: list

    def score(self, images, captions):
        small_device(self.calls, captions)
        return super().score(images, captions)


CAPS = [
    "A red vintage car parked beside a calm lake at dawn.",
    "A tabby cat framed in a quiet library window.",
    "A poison apple on a silver plate in a dark kitchen.",
    "A lighthouse surrounded by fog near a busy harbor.",
    "A hot air balloon drifting over a field of sunflowers.",
]


def sample_batch(captions) -> dict:
    ids = [f"c{i}" for i in range(len(captions))]
    return {
        S.ID: np.array(ids, dtype=object),
        S.CAPTION: np.array(captions, dtype=object),
        S.SAMPLE: np.zeros(len(captions), np.int32),
        S.SEED: np.array([sample_seed(0, i, 0) for i in ids], np.int64),
    }


@pytest.fixture(scope="module")
def synth_kwargs():
    return dict(device="cpu", steps=2, guidance=5.0)


def test_synthesis_oom_is_retried_in_halves_and_a_lone_failure_gets_a_reason(synth_kwargs):
    stage = OomSynth(**synth_kwargs)
    stage.calls = []
    out = stage(sample_batch(CAPS))

    sizes = [len(c) for c in stage.calls]
    assert sizes[0] == len(CAPS)  # the whole batch first
    assert sizes == [5, 2, 3, 1, 2]  # 5 → 2 + 3 (the poisoned one in it) → 1 (alone, fails) + 2
    assert list(out[S.REASON]) == ["", "", S.R_OOM, "", ""]
    assert "memory" in out[S.DETAIL][2]
    assert stage.oom_retries == 3  # the batches of 5, of 3 and the poisoned one alone
    # Every other sample was generated exactly once, in a batch that fit.
    ok_calls = [c for c in stage.calls if len(c) <= 2 and not any(POISON in p for p in c)]
    assert sorted(p for c in ok_calls for p in c) == sorted(c for c in CAPS if POISON not in c)

    # The images are those a stage without memory trouble makes of each sample on its own.
    plain = TinySDXL(**synth_kwargs)
    for i, cap in enumerate(CAPS):
        if POISON in cap:
            assert not out[S.IMAGE][i].any()  # a black placeholder, marked unusable
            continue
        alone = plain(sample_batch([cap]) | {S.ID: np.array([f"c{i}"], dtype=object),
                                            S.SEED: np.array([sample_seed(0, f"c{i}", 0)], np.int64)})
        assert np.abs(out[S.IMAGE][i].astype(int) - alone[S.IMAGE][0].astype(int)).max() <= 1


def test_scoring_oom_is_retried_in_halves_and_a_lone_failure_gets_a_reason(synth_kwargs):
    images = TinySDXL(**synth_kwargs)(sample_batch(CAPS))
    kwargs = dict(device="cpu", ssim_size=64, ssim_low=32)
    stage = OomScorer(**kwargs)
    stage.calls = []
    out = stage(dict(images))

    assert [len(c) for c in stage.calls] == [5, 2, 3, 1, 2]
    assert list(out[S.REASON]) == ["", "", S.R_OOM, "", ""]
    assert "memory" in out[S.DETAIL][2]
    assert np.isnan(out[S.SCORE][2]) and np.isfinite(np.delete(out[S.SCORE], 2)).all()

    # Scores of the others equal a trouble-free scorer's, one image at a time.
    plain = TinyClipScorer(**kwargs)
    for i in [0, 1, 3, 4]:
        one = {k: v[i : i + 1] for k, v in images.items()}
        ref = plain(one)
        assert out[S.CLIP_SCORE][i] == pytest.approx(ref[S.CLIP_SCORE][0], abs=1e-5)
        assert out[S.SSIM][i] == pytest.approx(ref[S.SSIM][0], abs=1e-9)


def test_an_error_that_is_not_oom_is_not_swallowed(synth_kwargs):
    class Broken(TinySDXL):
        def generate(self, prompts, seeds):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        Broken(**synth_kwargs)(sample_batch(CAPS[:2]))


@pytest.mark.parametrize("size", [{}, {"height": 32, "width": 48}])
def test_a_batch_failing_entirely_gets_placeholders_of_the_real_image_shape(synth_kwargs, size):
    """Not 1×1: Ray may merge this block with good ones, and one shape keeps the image column an array."""
    stage = OomSynth(**synth_kwargs, **size)
    stage.calls = []
    out = stage(sample_batch([f"A {POISON} pear.", f"A {POISON} plum."]))
    real = TinySDXL(**synth_kwargs, **size)(sample_batch(CAPS[:1]))  # diffusers' own output shape
    assert list(out[S.REASON]) == [S.R_OOM, S.R_OOM]
    assert out[S.IMAGE].dtype == np.uint8 and out[S.IMAGE].shape == (2, *real[S.IMAGE].shape[1:])
    assert not out[S.IMAGE].any()
    assert list(out[S.HEIGHT]) == [real[S.HEIGHT][0]] * 2 and list(out[S.WIDTH]) == [real[S.WIDTH][0]] * 2


def merged_block(good: dict, bad_rows: list[int], n: int) -> dict:
    """`good`'s rows interleaved with 1×1×3 OOM placeholders (what synthesis used to emit when a
    whole batch failed), the image column an object array of per-row images: the numpy batch
    Ray 2.60 hands the scorer after merging a (k,64,64,3) block with a (m,1,1,3) one."""
    images = np.empty(n, dtype=object)
    out = {k: np.empty(n, dtype=object) for k in (S.ID, S.CAPTION, S.REASON, S.DETAIL)}
    out[S.SAMPLE], out[S.SEED] = np.zeros(n, np.int32), np.zeros(n, np.int64)
    rows = iter(range(len(good[S.ID])))
    for i in range(n):
        if i in bad_rows:
            images[i] = np.zeros((1, 1, 3), np.uint8)
            out[S.ID][i], out[S.CAPTION][i] = f"bad{i}", f"A {POISON} fig."
            out[S.REASON][i], out[S.DETAIL][i] = S.R_OOM, "out of device memory even alone"
        else:
            j = next(rows)
            images[i] = good[S.IMAGE][j]
            for k in (S.ID, S.CAPTION, S.REASON, S.DETAIL):
                out[k][i] = good[k][j]
    out[S.IMAGE] = images
    return out


def test_scorer_takes_a_block_merged_with_placeholders_of_another_shape(synth_kwargs):
    good = TinySDXL(**synth_kwargs)(sample_batch(CAPS[:3]))
    merged = merged_block(good, bad_rows=[1, 3], n=5)
    kwargs = dict(device="cpu", ssim_size=64, ssim_low=32)
    out = TinyClipScorer(**kwargs)(merged)

    alone = TinyClipScorer(**kwargs)(dict(good))  # the good rows as one ordinary batch
    usable = [0, 2, 4]
    np.testing.assert_allclose(out[S.CLIP_SCORE][usable], alone[S.CLIP_SCORE], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[S.SSIM][usable], alone[S.SSIM])
    assert np.isfinite(out[S.SCORE][usable]).all()
    for i in [1, 3]:
        assert out[S.REASON][i] == S.R_OOM and "memory" in out[S.DETAIL][i]
        assert np.isnan(out[S.CLIP_SCORE][i]) and np.isnan(out[S.SSIM][i]) and np.isnan(out[S.SCORE][i])
    assert list(out[S.REASON][usable]) == ["", "", ""]


def test_ray_merges_a_failed_batch_into_the_scorers_batch_and_scoring_goes_on(ray_local, synth_kwargs):
    """The same through Ray itself: synthesis blocks of 3 and 2 rows, scored 5 at a time."""
    ray = ray_local
    good = TinySDXL(**synth_kwargs)(sample_batch(CAPS[:3]))
    bad = {k: v[:2].copy() for k, v in good.items()}
    bad[S.ID] = np.array(["bad0", "bad1"], dtype=object)
    bad[S.IMAGE] = np.zeros((2, 1, 1, 3), np.uint8)  # the old all-failed placeholder
    bad[S.REASON] = np.array([S.R_OOM] * 2, dtype=object)

    def synthesis_blocks(batch):
        return good if int(batch["id"][0]) == 0 else bad

    kwargs = dict(device="cpu", ssim_size=64, ssim_low=32)
    ds = ray.data.range(2, override_num_blocks=2).map_batches(synthesis_blocks, batch_size=1, batch_format="numpy")
    ds = adapter.apply(ds, TinyClipScorer(**kwargs, batch_size=5), Placement(cpus=0.5, actors=(1, 1)))
    rows = {r[S.ID]: r for r in ds.take_all()}

    alone = TinyClipScorer(**kwargs)(dict(good))
    for i, id_ in enumerate(good[S.ID]):
        assert rows[id_][S.SSIM] == alone[S.SSIM][i]
        assert rows[id_][S.CLIP_SCORE] == pytest.approx(alone[S.CLIP_SCORE][i], abs=1e-6)
    for id_ in ["bad0", "bad1"]:
        assert rows[id_][S.REASON] == S.R_OOM and np.isnan(rows[id_][S.SCORE])


class OverflowScorer(TinyClipScorer):
    """CLIP's tower overflows (fp16) on the captions that mention it."""

    def score(self, images, captions):
        clip, ssim = super().score(images, captions)
        clip[["overflow" in c for c in captions]] = np.nan
        return clip, ssim


def test_a_score_that_is_not_finite_gets_a_reason(synth_kwargs):
    caps = [CAPS[0], "An overflow of red paint on a white floor.", CAPS[1]]
    batch = TinySDXL(**synth_kwargs)(sample_batch(caps))
    out = OverflowScorer(device="cpu", ssim_size=64, ssim_low=32)(batch)
    assert list(out[S.REASON]) == ["", S.R_BAD_SCORE, ""]
    assert re.fullmatch(r"clip_score nan, ssim -?[0-9.e-]+", out[S.DETAIL][1])
    assert np.isnan(out[S.SCORE][1]) and np.isfinite(out[S.SCORE][[0, 2]]).all()
