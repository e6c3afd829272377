"""A generator built from disk and from an in-memory pipeline agree; padding to the compiled
batch size keeps each sample's latents (one generator per sample), its pixels within a grey level."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factory import schema as S
from factory.devices import resolve_device
from factory.errors import SettingError
from factory.synth.diffusion import INDUCTOR_TUNING, SDXL, load_text_to_image
from factory.synth.tiny import TinySDXL, ensure_tiny_sdxl


def tiny_pipe():
    return load_text_to_image(str(ensure_tiny_sdxl()), "float32", "cpu")


def _batch(n):
    return {S.ID: np.array([f"c{i}" for i in range(n)], dtype=object),
            S.CAPTION: np.array([f"a red house number {i}" for i in range(n)], dtype=object),
            S.SAMPLE: np.zeros(n, np.int32), S.SEED: np.arange(100, 100 + n, dtype=np.int64)}


def test_from_pipeline_matches_constructor_and_padding_keeps_images():
    opts = dict(steps=2, guidance=5.0)
    loaded = TinySDXL(device="cpu", **opts)
    built = SDXL.from_pipeline(tiny_pipe(), device="cpu", **opts)
    a = loaded(_batch(3))
    b = built(_batch(3))
    assert a[S.IMAGE].dtype == np.uint8 and a[S.IMAGE].shape[0] == 3
    np.testing.assert_array_equal(a[S.IMAGE], b[S.IMAGE])
    built.pad_to = 5  # what compile=True with batch_size=5 sets: short batches are padded
    padded = built(_batch(3))
    assert padded[S.IMAGE].shape == a[S.IMAGE].shape
    np.testing.assert_allclose(padded[S.IMAGE].astype(int), a[S.IMAGE].astype(int), atol=1)


def test_compiled_synthesis_with_kernel_choices_matches_eager():
    """compile=True (warm-up at the batch size in the constructor) with the SDPA backend pinned and
    inductor's tuning settings gives the eager pipeline's images; the settings do not leak out."""
    import torch._inductor.config as inductor_config

    opts = dict(steps=2, guidance=5.0)
    eager = TinySDXL(device="cpu", **opts)
    import torch._inductor.compile_fx as compile_fx_module

    tuning_at_compile = []
    compile_fx = compile_fx_module.compile_fx

    def spy(*args, **kwargs):  # dynamo's inductor backend imports compile_fx at each compilation
        tuning_at_compile.append({k: getattr(inductor_config, k) for k in INDUCTOR_TUNING})
        return compile_fx(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compile_fx_module, "compile_fx", spy)
        compiled = TinySDXL(device="cpu", compile=True, batch_size=2, attention_backend="math", inductor_tuning=True,
                            **opts).loaded()
        assert compiled.warmup_s is not None and compiled.pad_to == 2
        a, b = eager(_batch(2)), compiled(_batch(2))
    assert tuning_at_compile and all(t == INDUCTOR_TUNING for t in tuning_at_compile)
    assert np.abs(a[S.IMAGE].astype(int) - b[S.IMAGE].astype(int)).max() <= 2
    assert inductor_config.epilogue_fusion is True and inductor_config.coordinate_descent_tuning is False


def test_unknown_attention_backend_is_one_clear_error():
    with pytest.raises(SettingError, match="attention_backend='flash2'"):
        TinySDXL(attention_backend="flash2")  # before anything loads


def test_device_error_names_the_config_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"^model\.device=cuda but this worker sees no CUDA device$"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match=r"^scorer\.device=cuda"):
        resolve_device("cuda", key="scorer.device")
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("backend, flags", [("auto", None), ("math", (False, False, True)), ("flash", (True, False, False))])
def test_every_attention_runs_under_the_chosen_kernel_and_tuning(monkeypatch, backend, flags):
    """What torch's SDPA sees at each call (backends enabled, inductor's settings), through diffusers' processors."""
    import torch._inductor.config as inductor_config

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                      torch.backends.cuda.math_sdp_enabled()), inductor_config.coordinate_descent_tuning))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    synth = TinySDXL(device="cpu", steps=1, guidance=5.0, attention_backend=backend, inductor_tuning=True).loaded()
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
              torch.backends.cuda.math_sdp_enabled())
    synth(_batch(1))
    assert seen, "no attention went through torch's SDPA"
    assert {s for s, _ in seen} == {flags or before}
    assert {t for _, t in seen} == {False}  # inductor's tuning applies only with compile (checked above)


@pytest.mark.parametrize("frac, base_steps, refiner_steps", [(0.5, 2, 2), (0.75, 3, 1)])
def test_the_refiner_takes_over_at_high_noise_frac(frac, base_steps, refiner_steps):
    """SDXL's ensemble of experts: the base denoises the first share of the schedule and hands its
    latents to the refiner (diffusers' denoising_end / denoising_start), sharing encoder 2 and the VAE."""
    synth = TinySDXL(tiny_refiner=True, device="cpu", steps=4, guidance=5.0, high_noise_frac=frac).loaded()
    assert synth.refiner.text_encoder_2 is synth.pipe.text_encoder_2 and synth.refiner.vae is synth.pipe.vae
    calls = {"base": 0, "refiner": 0}
    synth.pipe.unet.register_forward_hook(lambda *_: calls.__setitem__("base", calls["base"] + 1))
    synth.refiner.unet.register_forward_hook(lambda *_: calls.__setitem__("refiner", calls["refiner"] + 1))
    refined = synth(_batch(2))
    assert calls == {"base": base_steps, "refiner": refiner_steps}  # one UNet call per step: both CFG branches batched
    assert refined[S.IMAGE].shape == (2, 64, 64, 3) and list(refined[S.REASON]) == ["", ""]
    base_only = TinySDXL(device="cpu", steps=4, guidance=5.0)(_batch(2))
    assert not np.array_equal(refined[S.IMAGE], base_only[S.IMAGE])  # the refiner's steps are the base's no more


def test_the_negative_prompt_reaches_the_pipeline():
    pipe = tiny_pipe()
    plain = SDXL.from_pipeline(pipe, device="cpu", steps=2, guidance=5.0)(_batch(1))
    negative = SDXL.from_pipeline(pipe, device="cpu", steps=2, guidance=5.0, negative_prompt="blurry, dark")(_batch(1))
    assert np.abs(plain[S.IMAGE].astype(int) - negative[S.IMAGE].astype(int)).mean() > 1
    # without guidance there is no negative branch: the setting changes nothing
    a = SDXL.from_pipeline(pipe, device="cpu", steps=2, guidance=1.0)(_batch(1))
    b = SDXL.from_pipeline(pipe, device="cpu", steps=2, guidance=1.0, negative_prompt="blurry, dark")(_batch(1))
    np.testing.assert_array_equal(a[S.IMAGE], b[S.IMAGE])
