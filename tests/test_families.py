"""Every diffusers family: tiny pipelines built offline load back through from_pretrained and
generate; the offline tokenizers round-trip; the exact architectures kept in benchmarks/arch/
build to the published parameter counts; FLOP counts scale as the sampling loop says."""
from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from benchmarks.arch import exact
from factory.synth.diffusion import load_text_to_image
from factory.synth.families import CFG, FAMILIES, call_arguments, size_multiple
from factory.synth.offline_tokenizers import gemma_tokenizer, t5_tokenizer, train_t5_vocab, training_text
from factory.synth.tiny_families import HUB_TOKENIZER_CLASSES, TINY_SIZE, ensure_tiny

ROOT = Path(__file__).resolve().parent.parent
# sd35_large's tiny pipeline is built by the same code as sd35_medium's
TINY = ["sd3", "sd35_medium", "flux_schnell", "flux_dev", "pixart_sigma", "sana"]
PROMPTS = ["A red vintage car parked in an autumn forest, with vivid saturated colors.",
           "A tabby cat framed in a quiet library window."]


@pytest.fixture(scope="session")
def tiny_pipes():
    """Each tiny family saved once (FACTORY_CACHE) and loaded back as factory/synth/diffusion.py loads models."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = ensure_tiny(name)
            cache[name] = (folder, load_text_to_image(str(folder)))
        return cache[name]

    return get


def generate(pipe, name, prompts, seed=0):
    g = torch.Generator("cpu").manual_seed(seed)
    kwargs = call_arguments(FAMILIES[name], steps=1)
    return pipe(prompt=prompts, generator=g, height=TINY_SIZE, width=TINY_SIZE, output_type="pt", **kwargs).images


@pytest.mark.parametrize("name", TINY)
def test_tiny_family_loads_back_and_generates(name, tiny_pipes):
    folder, pipe = tiny_pipes(name)
    fam = FAMILIES[name]
    assert type(pipe).__name__ == fam.pipeline
    index = json.loads((folder / "model_index.json").read_text())
    for key, cls in HUB_TOKENIZER_CLASSES[fam.pipeline].items():
        assert index[key] == ["transformers", cls]
    assert size_multiple(pipe) == fam.size_multiple
    images = generate(pipe, name, PROMPTS)
    assert tuple(images.shape) == (2, 3, TINY_SIZE, TINY_SIZE)
    assert bool(torch.isfinite(images).all()) and float(images.std()) > 0.02  # not one colour
    assert torch.equal(images, generate(pipe, name, PROMPTS))  # same seed, same image
    # the text reaches the denoiser: another caption, same noise, another image
    other = generate(pipe, name, [PROMPTS[1], PROMPTS[0]])
    assert not torch.allclose(images[0], other[0], atol=1e-4)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_table_matches_the_installed_pipelines(name):
    fam = FAMILIES[name]
    cls = getattr(diffusers, fam.pipeline)
    params = inspect.signature(cls.__call__).parameters
    assert fam.denoiser in inspect.signature(cls.__init__).parameters
    assert set(call_arguments(fam)) <= set(params), set(call_arguments(fam)) - set(params)
    assert ("negative_prompt" in params) >= fam.negative_prompt
    assert fam.size % fam.size_multiple == 0 and fam.steps > 0
    assert fam.cfg_passes == (2 if fam.guidance == CFG else 1)


def test_t5_tokenizer_has_t5s_layout_and_round_trips():
    tok = t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1  # sentinels last, highest first
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    for caption in training_text()[:50]:
        ids = tok(caption).input_ids
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == caption
    assert train_t5_vocab() == train_t5_vocab()  # every node trains the same vocabulary


def test_gemma_tokenizer_has_gemmas_layout_and_round_trips():
    from transformers import AutoTokenizer

    tok = gemma_tokenizer()
    assert [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    text = "A café in Zürich ✓, with soft morning light."  # unseen characters: byte fallback, no <unk>
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    again = AutoTokenizer.from_pretrained(tok.name_or_path)  # transformers' own loader reads the folder alike
    assert again(text).input_ids == ids


@pytest.mark.parametrize("name", list(FAMILIES))
def test_exact_architecture_builds_to_the_published_counts(name):
    spec = exact.arch(name)
    pipe = exact.build_pipeline(name, "meta", torch.float32)  # shapes only: nothing allocated
    assert type(pipe).__name__ == FAMILIES[name].pipeline
    modules = {k: getattr(pipe, k) for k in spec["modules"]}
    for key in [k for k in modules if k.startswith("text_encoder")]:  # every token id has an embedding
        assert len(getattr(pipe, key.replace("text_encoder", "tokenizer"))) <= modules[key].config.vocab_size
    for key, module in modules.items():
        assert exact.parameters(module) == spec["modules"][key]["parameters"], key
    denoiser = spec["modules"][spec["denoiser"]]
    if denoiser.get("published_checked", True):
        assert exact.parameters(modules[spec["denoiser"]]) == pytest.approx(denoiser["published_parameters"], rel=0.02)


def test_flop_counts_scale_with_steps_guidance_and_size():
    modules = exact.build_modules("sd3", "meta")
    base = exact.image_flops("sd3", modules, 512, 512, steps=10, passes=2)
    big = exact.image_flops("sd3", modules, 1024, 1024, steps=20, passes=1)
    assert min(base[k] for k in ("denoiser_forward", "vae_decode", "text_encoders")) > 0
    for f in (base, big):
        assert f["denoiser"] == f["steps"] * f["passes"] * f["denoiser_forward"]
        assert f["total"] == f["denoiser"] + f["vae_decode"] + f["text_encoders"]
    assert big["text_encoders"] * 2 == base["text_encoders"]  # the negative prompt is encoded only under CFG
    # 4× the pixels: over 4× the VAE's and the transformer's work (their attention grows with the square)
    assert 4 * base["vae_decode"] < big["vae_decode"] < 4.5 * base["vae_decode"]
    assert 4 * base["denoiser_forward"] < big["denoiser_forward"] < 8 * base["denoiser_forward"]


def test_family_benchmark_runs_every_tiny_family():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # the session's FACTORY_CACHE: tokenizers reused
    out = subprocess.run([sys.executable, "benchmarks/synth_gpu.py", "--family", "all", "--tiny"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    for name in FAMILIES:
        assert any(line.startswith(f"{name} ratio measured / bound: ") for line in lines), name
    value = float(lines[-1])
    assert math.isfinite(value) and value > 0


def test_unknown_family_is_one_clear_line():
    from factory.synth.families import family
    from factory.synth.tiny_families import build_tiny

    with pytest.raises(ValueError, match=r"unknown model family 'sd4': expected one of sdxl, sd3, "):
        family("sd4")
    with pytest.raises(ValueError, match=r"no tiny pipeline for family 'sd4'"):
        build_tiny("sd4")
    with pytest.raises(ValueError, match=r"no exact architecture for family 'sd4'"):
        exact.arch("sd4")
