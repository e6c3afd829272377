"""A batch that runs out of device memory is retried in halves; a sample that fails alone gets a reason."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factory import schema as S
from factory.score.scorer import ClipSsimScorer
from factory.synth.diffusion import DiffusionSynth
from factory.seeds import sample_seed

POISON = "poison"  # a caption that runs out of memory even alone


def oom(n: int) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB for a batch of {n}")


def small_device(calls: list, texts) -> None:
    """Records a call; the device holds at most 2 samples, and never the poisoned caption."""
    calls.append(list(texts))
    if len(texts) > 2 or any(POISON in t for t in texts):
        raise oom(len(texts))


class OomSynth(DiffusionSynth):
    calls: list

    def generate(self, prompts, seeds):
        small_device(self.calls, prompts)
        return super().generate(prompts, seeds)


class OomScorer(ClipSsimScorer):
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
    return dict(path="tiny", device="cpu", steps=2, guidance=5.0, torch_threads=1)


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
    plain = DiffusionSynth(**synth_kwargs)
    for i, cap in enumerate(CAPS):
        if POISON in cap:
            assert not out[S.IMAGE][i].any()  # a black placeholder, marked unusable
            continue
        alone = plain(sample_batch([cap]) | {S.ID: np.array([f"c{i}"], dtype=object),
                                            S.SEED: np.array([sample_seed(0, f"c{i}", 0)], np.int64)})
        assert np.abs(out[S.IMAGE][i].astype(int) - alone[S.IMAGE][0].astype(int)).max() <= 1


def test_scoring_oom_is_retried_in_halves_and_a_lone_failure_gets_a_reason(synth_kwargs):
    images = DiffusionSynth(**synth_kwargs)(sample_batch(CAPS))
    kwargs = dict(arch="tiny", device="cpu", ssim_size=64, ssim_low=32, torch_threads=1)
    stage = OomScorer(**kwargs)
    stage.calls = []
    out = stage(dict(images))

    assert [len(c) for c in stage.calls] == [5, 2, 3, 1, 2]
    assert list(out[S.REASON]) == ["", "", S.R_OOM, "", ""]
    assert "memory" in out[S.DETAIL][2]
    assert np.isnan(out[S.SCORE][2]) and np.isfinite(np.delete(out[S.SCORE], 2)).all()

    # Scores of the others equal a trouble-free scorer's, one image at a time.
    plain = ClipSsimScorer(**kwargs)
    for i in [0, 1, 3, 4]:
        one = {k: v[i : i + 1] for k, v in images.items()}
        ref = plain(one)
        assert out[S.CLIP_SCORE][i] == pytest.approx(ref[S.CLIP_SCORE][0], abs=1e-5)
        assert out[S.SSIM][i] == pytest.approx(ref[S.SSIM][0], abs=1e-9)


def test_an_error_that_is_not_oom_is_not_swallowed(synth_kwargs):
    class Broken(DiffusionSynth):
        def generate(self, prompts, seeds):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        Broken(**synth_kwargs)(sample_batch(CAPS[:2]))
