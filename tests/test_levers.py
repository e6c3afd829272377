"""Issue 16's speed levers on the generator: model.quantize=fp8 (refusals, and exactly which layers
it would quantize, without torchao), and the step-distilled recipe's model settings (a replacement
denoiser, a fused LoRA, a scheduler swap) on tiny stand-ins built offline."""
from __future__ import annotations

import copy
import importlib.util
import sys
import types

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from conftest import ROOT
from factory import schema as S
from factory.config import compose
from factory.errors import SettingError
from factory.job import load_job
from factory.synth import diffusion
from factory.synth.diffusion import SDXL, load_text_to_image, replace_denoiser
from factory.synth.fp8 import check_fp8_device, fp8_linear, fp8_targets, quantize_denoiser
from factory.synth.tiny import TINY_SAMPLE_SIZE, TinySDXL, build_tiny_sdxl, ensure_tiny_sdxl, tiny_sdxl_unet
from factory.synth.tiny_families import TinyFlux

HAS_PEFT = importlib.util.find_spec("peft") is not None
ONE_STEP = dict(device="cpu", steps=1, guidance=5.0)


def _batch(n=2):
    return {S.ID: np.array([f"c{i}" for i in range(n)], dtype=object),
            S.CAPTION: np.array([f"a red house number {i}" for i in range(n)], dtype=object),
            S.SAMPLE: np.zeros(n, np.int32), S.SEED: np.arange(7, 7 + n, dtype=np.int64)}


def _refusal(overrides: list[str]) -> str:
    with pytest.raises(ValueError) as err:
        load_job(compose(["model=tiny", *overrides]))
    line = str(err.value)
    assert "\n" not in line
    return line


# ---- model.quantize=fp8 ---------------------------------------------------------------------

def test_fp8_refused_on_cpu_when_the_job_loads():
    line = _refusal(["model.quantize=fp8", "model.device=cpu"])
    assert line.startswith("model.quantize=fp8 needs a CUDA GPU of compute capability 8.9") and "runs on cpu" in line


def test_fp8_refused_on_an_older_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(SettingError) as err:
        check_fp8_device("cuda")
    assert str(err.value) == ("model.quantize=fp8 needs compute capability 8.9 or newer (fp8 tensor cores); "
                              "NVIDIA A100-SXM4-80GB has 8.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8_device("cuda:0")  # an H100/H200 passes


def test_fp8_refused_in_setup_before_anything_loads(monkeypatch):
    """A worker whose GPU is too old refuses in setup, before the pipeline loads."""
    stage = TinySDXL(**ONE_STEP)
    stage.quantize = "fp8"  # as if the driver (no GPU) could not check the worker's device
    monkeypatch.setattr(diffusion, "load_text_to_image", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(SettingError, match=r"^model\.quantize=fp8 needs a CUDA GPU .* runs on cpu$"):
        stage.setup()


def test_fp8_without_torchao_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    line = _refusal(["model.quantize=fp8", "model.device=cuda"])  # no CUDA here: the device is checked on the worker
    assert line == "model.quantize=fp8 needs torchao, which is not installed: pip install 'synth-factory[fp8]' (torchao)"
    assert _refusal(["model.quantize=int4"]) == "model.quantize='int4': expected null or one of fp8"


def test_fp8_filter_selects_exactly_the_denoisers_aligned_linear_layers():
    pipe = build_tiny_sdxl()
    targets = fp8_targets(pipe.unet)
    modules = dict(pipe.unet.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    assert targets and set(targets) <= set(linears)
    assert {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", "time_embedding.linear_1"} <= set(targets)
    assert not any(isinstance(modules[n], nn.Conv2d) for n in targets)
    skipped = set(linears) - set(targets)
    assert all(modules[n].in_features % 16 or modules[n].out_features % 16 for n in skipped)
    assert not fp8_linear(nn.Linear(8, 32)) and not fp8_linear(nn.Linear(32, 24)) and fp8_linear(nn.Linear(32, 48))
    assert not fp8_linear(nn.Conv2d(32, 32, 1)) and not fp8_linear(nn.Embedding(32, 32))


@pytest.fixture
def fake_torchao(monkeypatch):
    """torchao's quantization API as a recorder: which module it was given and what the filter picks."""
    calls = []

    def quantize_(model, config, filter_fn):
        calls.append({"model": model, "config": config,
                      "selected": [n for n, m in model.named_modules() if filter_fn(m, n)]})

    api = types.SimpleNamespace(quantize_=quantize_, PerRow=lambda: "row", PerTensor=lambda: "tensor",
                                Float8DynamicActivationFloat8WeightConfig=lambda granularity: {"granularity": granularity})
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", api)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else real(name, *a))
    return calls


def test_quantize_step_takes_the_denoiser_after_fusing_and_before_compile(fake_torchao, monkeypatch):
    pipe = load_text_to_image(str(ensure_tiny_sdxl()), "float32", "cpu")
    stage = TinySDXL(**ONE_STEP, fuse_qkv=True, batch_size=1, warmup_steps=1)
    stage.quantize, stage.compile = "fp8", True
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append((module, len(fake_torchao)))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    stage.attach(pipe, "cpu")
    [call] = fake_torchao
    assert call["model"] is pipe.unet and call["config"] == {"granularity": "tensor"}  # fp32 weights: per tensor
    assert call["selected"] == fp8_targets(pipe.unet)
    assert any(n.endswith("attn1.to_qkv") for n in call["selected"])  # the fused projections
    assert compiled[0] == (pipe.unet, 1)  # compiled after quantizing
    assert quantize_denoiser(pipe.unet.to(torch.bfloat16)) == len(call["selected"])
    assert fake_torchao[-1]["config"] == {"granularity": "row"}


# ---- the step-distilled recipe's settings ----------------------------------------------------

def test_turbo_recipe_composes_and_is_fingerprinted():
    c = compose(["+experiment=turbo"])
    m = c["model"]
    assert m["lora"] == "ByteDance/SDXL-Lightning" and m["lora_weight_name"] == "sdxl_lightning_4step_lora.safetensors"
    assert m["scheduler"] == "EulerDiscreteScheduler" and m["scheduler_config"] == {"timestep_spacing": "trailing"}
    assert c["synth"]["steps"] == 4 and c["synth"]["guidance"] == 0.0 and m["refiner_path"] is None
    params = SDXL(path="x", device="cpu", scheduler="EulerDiscreteScheduler", denoiser_path="c/d",
                  scheduler_config={"timestep_spacing": "trailing"}).params()
    assert {"scheduler", "scheduler_config", "denoiser_path", "lora", "lora_scale", "quantize"} <= set(params)


@pytest.mark.parametrize("overrides, words", [
    (["model.scheduler=PNDMScheduler"], "model.scheduler='PNDMScheduler': expected null or one of DDIMScheduler"),
    (["+model.scheduler_config.beta_end=0.1"], "model.scheduler_config has beta_end: expected keys among timestep_spacing"),
    (["+model.scheduler_config.timestep_spacing=sideways"], "model.scheduler_config.timestep_spacing='sideways': expected one of leading"),
    (["model.lora_scale=0.5"], "model.lora_scale=0.5 is set, but model.lora is not"),
    (["model.denoiser_path=/no/such/unet"], "model.denoiser_path='/no/such/unet': no such file or folder"),
    (["model=tiny_flux", "model.scheduler=EulerDiscreteScheduler"], "model.scheduler is set, but flux_schnell runs a flow-matching transformer"),
])
def test_model_changes_refused_in_one_line(overrides, words):
    assert words in _refusal(overrides)


def test_scheduler_swap_and_replacement_denoiser_change_the_images(tmp_path):
    base = TinySDXL(**ONE_STEP).loaded()
    swapped = SDXL.from_pipeline(copy.deepcopy(base.pipe), **ONE_STEP, scheduler="EulerAncestralDiscreteScheduler",
                                 scheduler_config={"timestep_spacing": "trailing"})
    assert type(swapped.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert swapped.pipe.scheduler.config.timestep_spacing == "trailing" and swapped.pipe.scheduler.config.beta_end == 0.012
    torch.manual_seed(1)
    other = tiny_sdxl_unet(TINY_SAMPLE_SIZE, time_ids=6, pooled_dim=32, cross_attention_dim=64)  # the tiny UNet, another seed
    other.save_pretrained(tmp_path / "unet")
    replaced = TinySDXL(**ONE_STEP, denoiser_path=str(tmp_path / "unet")).loaded()  # through setup's load
    for name, value in replaced.pipe.unet.state_dict().items():
        torch.testing.assert_close(value, other.state_dict()[name], rtol=0, atol=0)
    a, b, c = (s(_batch())[S.IMAGE].astype(int) for s in (base, swapped, replaced))
    assert np.abs(a - b).mean() > 1 and np.abs(a - c).mean() > 0.1  # a random tiny UNet moves 1-step pixels little
    safetensors.torch.save_file(other.state_dict(), tmp_path / "unet.safetensors")
    from_file = copy.deepcopy(base.pipe)
    replace_denoiser(from_file, "unet", str(tmp_path / "unet.safetensors"))
    torch.testing.assert_close(from_file.unet.conv_in.weight, other.conv_in.weight, rtol=0, atol=0)
    safetensors.torch.save_file({"conv_in.weight": other.conv_in.weight}, tmp_path / "part.safetensors")
    with pytest.raises(SettingError, match=r"is not a state dict of this UNet2DConditionModel \(\d+ keys missing, 0 unexpected"):
        replace_denoiser(from_file, "unet", str(tmp_path / "part.safetensors"))


def test_scheduler_refused_for_a_transformer_family():
    with pytest.raises(SettingError, match="^scheduler_config is set, but flux_schnell"):
        TinyFlux(device="cpu", guidance=0.0, scheduler_config={"timestep_spacing": "trailing"})


def _tiny_lora(unet, rank=2, seed=3) -> tuple[dict, dict]:
    """A PEFT-format LoRA for some of the tiny UNet's attention projections (keys `unet.<module>.lora_A/B.weight`),
    and each module's expected weight delta B @ A (alpha = rank: scale 1)."""
    g = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
                 "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2"):
        layer = dict(unet.named_modules())[name]
        a = torch.randn(rank, layer.in_features, generator=g) * 0.3
        b = torch.randn(layer.out_features, rank, generator=g) * 0.3
        state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = a, b
        deltas[name] = b @ a
    return state, deltas


@pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install 'synth-factory[lora]'): diffusers loads LoRAs through it")
def test_lora_is_fused_into_the_unet_and_changes_the_images(tmp_path):
    base = TinySDXL(**ONE_STEP).loaded()
    state, deltas = _tiny_lora(base.pipe.unet)
    safetensors.torch.save_file(state, tmp_path / "tiny_lora.safetensors")
    turbo = TinySDXL(**{**ONE_STEP, "guidance": 0.0}, lora=str(tmp_path / "tiny_lora.safetensors"), lora_scale=0.5,
                     scheduler="EulerDiscreteScheduler", scheduler_config={"timestep_spacing": "trailing"}).loaded()
    fused, plain = dict(turbo.pipe.unet.named_modules()), dict(base.pipe.unet.named_modules())
    assert not any("lora" in n for n in fused)  # fused, adapter layers dropped: it compiles as the base does
    for name, delta in deltas.items():
        torch.testing.assert_close(fused[name].weight, plain[name].weight + 0.5 * delta, rtol=1e-5, atol=1e-5)
    untouched = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
    torch.testing.assert_close(fused[untouched].weight, plain[untouched].weight, rtol=0, atol=0)
    assert np.abs(base(_batch())[S.IMAGE].astype(int) - turbo(_batch())[S.IMAGE].astype(int)).mean() > 1


# ---- benchmarks/synth_gpu.py's new flags ----------------------------------------------------

@pytest.fixture
def synth_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import synth_gpu as module

    return module


def test_synth_gpu_variants_parse_nested_and_run_fp8_last(synth_gpu):
    a = synth_gpu.parse(["--variant", "quantize=fp8", "--variant", "steps=4,guidance=0,scheduler_config.timestep_spacing=trailing",
                         "--compare", "lora_scale=0.125"])
    assert a.variant == [{"steps": 4, "guidance": 0, "scheduler_config": {"timestep_spacing": "trailing"}}, {"quantize": "fp8"}]
    assert a.compare == [{"lora_scale": 0.125}]
    with pytest.raises(SystemExit, match="once per run"):  # the reference of --compare would be quantized too
        synth_gpu.parse(["--variant", "quantize=fp8", "--compare", "quantize=fp8"])
    with pytest.raises(SystemExit, match="not with quantize=fp8"):
        synth_gpu.parse(["--ablate", "--variant", "quantize=fp8"])


def test_synth_gpu_compare_figures(synth_gpu):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    new = ref.copy()
    new[1, :4] = 255 - new[1, :4]

    class Scorer:
        def score(self, images, prompts):
            return images.reshape(len(images), -1).mean(axis=1) / 255, None

    d = synth_gpu.compare_images(ref, new, ["a", "b"], Scorer())
    assert d["mad"] == pytest.approx(np.abs(ref.astype(int) - new.astype(int)).mean()) and d["mad"] > 0
    assert d["ssim_min"] < d["ssim_mean"] < 1 and d["clip_delta_abs"] > 0
    same = synth_gpu.compare_images(ref, ref, ["a", "b"], Scorer())
    assert same["mad"] == 0 and same["ssim_min"] == pytest.approx(1) and same["clip_delta"] == 0
