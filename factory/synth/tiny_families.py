"""Tiny random-weight pipelines of the other diffusers families, built offline.

Same pipeline, denoiser, VAE, text-encoder, tokenizer and scheduler classes as the published
models (SD3 / SD3.5, FLUX.1 schnell / dev, PixArt-Σ, SANA), the same latent channels and the same
VAE scale factors and patch sizes (so the same size multiples, see factory/synth/families.py),
only a few channels wide: saved with `save_pretrained` and loaded back through
`DiffusionPipeline.from_pretrained` exactly as the real ones are. Widths follow diffusers' own
fast tests (tests/pipelines/<family>/test_*.py, get_dummy_components). The tiny SDXL stays in
factory/synth/tiny.py.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    T5Config,
    T5EncoderModel,
)

from factory.cache import save_once, tiny_cache_dir
from factory.stage import GiB
from factory.synth import offline_tokenizers, tiny
from factory.synth.generators import SD3, FluxSchnell, PixArtSigma, Sana
from factory.synth.tiny import TINY_SEED, build_tiny_sdxl, ensure_tiny_sdxl

# Side of the tiny pipelines' images: a multiple of every family's size multiple (SANA's 32). Pass
# it as height and width: the pipelines' own defaults differ (FLUX and SANA default to 1024², as
# the real models; PixArt-Σ's resolution binning would generate at 256² and resize).
TINY_SIZE = 64

# Tokenizer classes as the hub's model_index.json names them (transformers 5 maps the slow and
# fast names to one class; save_pretrained would write the class's own name).
HUB_TOKENIZER_CLASSES = {
    "StableDiffusion3Pipeline": {"tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer", "tokenizer_3": "T5TokenizerFast"},
    "FluxPipeline": {"tokenizer": "CLIPTokenizer", "tokenizer_2": "T5TokenizerFast"},
    "PixArtSigmaPipeline": {"tokenizer": "T5Tokenizer"},
    "SanaPipeline": {"tokenizer": "GemmaTokenizerFast"},
}


@lru_cache(maxsize=None)
def _loaded_tokenizer(kind: str, cache: str):
    return {"clip": tiny.clip_tokenizer, "t5": offline_tokenizers.t5_tokenizer,
            "gemma": offline_tokenizers.gemma_tokenizer}[kind]()


def tokenizer(kind: str):
    """A fresh copy of the CLIP, T5 or Gemma tokenizer (loaded from the cache folder once per process:
    CLIP's takes a second or two to load, and pipelines set attributes such as padding_side on theirs)."""
    return copy.deepcopy(_loaded_tokenizer(kind, str(tiny_cache_dir())))


def tiny_vae_kl(latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool):
    """AutoencoderKL with 4 levels (scale factor 8, as SDXL's, SD3's and FLUX's), 8–32 channels."""

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, sample_size=64,
        block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=quant_conv, use_post_quant_conv=quant_conv,
    )


def tiny_clip(seed: int, projection: bool):
    """CLIP's text tower (49408 tokens, 77 positions) at width 32, as in factory/synth/tiny.py."""

    cfg = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
                         intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
                         max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def tiny_t5(seed: int, vocab_size: int, d_model: int):
    """T5 v1.1's encoder (gated GELU, relative positions) at toy width."""

    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(seed)
    return T5EncoderModel(cfg)


def build_tiny_sd3(seed: int = TINY_SEED, version: str = "3"):
    """StableDiffusion3Pipeline: MMDiT (patch 2, 16 latent channels), CLIP-L, CLIP-G with projection,
    T5. version "3.5" adds SD3.5's QK RMS-norm and one MMDiT-X dual-attention layer."""

    extra = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)} if version == "3.5" else {}
    torch.manual_seed(seed)
    # both CLIPs' states (32 + 32) are padded to T5's width: joint_attention_dim = T5's d_model = 64
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=16, **extra)
    torch.manual_seed(seed)
    vae = tiny_vae_kl(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False)  # SD3's VAE factors
    tokenizer_3 = tokenizer("t5")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=tiny_clip(seed, True), tokenizer=tokenizer("clip"),
        text_encoder_2=tiny_clip(seed + 1, True), tokenizer_2=tokenizer("clip"),
        text_encoder_3=tiny_t5(seed + 2, len(tokenizer_3), 64), tokenizer_3=tokenizer_3,
    )


def build_tiny_flux(seed: int = TINY_SEED, guidance_embeds: bool = False):
    """FluxPipeline: 1 double-stream + 2 single-stream blocks, 16 latent channels packed 2×2 (64 in),
    CLIP-L (pooled) + T5. guidance_embeds: True as FLUX.1-dev, False as FLUX.1-schnell."""

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
        guidance_embeds=guidance_embeds)
    torch.manual_seed(seed)
    vae = tiny_vae_kl(16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)  # FLUX's VAE factors
    # the published schedulers: dev shifts with the image size, schnell uses a fixed shift of 1
    sched = (dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                  max_image_seq_len=4096) if guidance_embeds else dict(shift=1.0, use_dynamic_shifting=False))
    tokenizer_2 = tokenizer("t5")
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**sched), vae=vae,
        text_encoder=tiny_clip(seed, False), tokenizer=tokenizer("clip"),
        text_encoder_2=tiny_t5(seed + 2, len(tokenizer_2), 32), tokenizer_2=tokenizer_2,
    )


def build_tiny_pixart_sigma(seed: int = TINY_SEED):
    """PixArtSigmaPipeline: DiT with adaLN-single (patch 2, 4 latent channels, learned sigma: 8 out),
    SDXL's VAE layout, T5, DPM-Solver++ as PixArt-Σ's scheduler_config.json."""

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=4,
        caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=32, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False)
    torch.manual_seed(seed)
    vae = tiny_vae_kl(4, scaling_factor=0.13025, shift_factor=None, quant_conv=True)
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="epsilon", lower_order_final=True, timestep_spacing="linspace")
    t5 = tokenizer("t5")
    return PixArtSigmaPipeline(tokenizer=t5, text_encoder=tiny_t5(seed + 2, len(t5), 32), vae=vae,
                               transformer=transformer, scheduler=scheduler)


def tiny_dc_ae(seed: int):
    """AutoencoderDC with SANA's 6 levels (scale factor 32, 32 latent channels) at 8–32 channels."""

    torch.manual_seed(seed)
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    scales = ((),) * 3 + ((5,),) * 3
    widths = (8, 8, 16, 16, 32, 32)  # the last level at least as wide as the latent (its shortcut repeats channels)
    return AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=4, encoder_block_types=blocks,
        decoder_block_types=blocks, encoder_block_out_channels=widths, decoder_block_out_channels=widths,
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6, encoder_qkv_multiscales=scales,
        decoder_qkv_multiscales=scales, upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)


def build_tiny_sana(seed: int = TINY_SEED):
    """SanaPipeline: linear-attention DiT (patch 1, 32 latent channels), DC-AE (scale 32), Gemma-2
    decoder as text encoder, DPM-Solver++ on flow sigmas as SANA's scheduler_config.json."""

    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=32, out_channels=32, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=16, mlp_ratio=2.5)
    gemma = tokenizer("gemma")
    torch.manual_seed(seed + 2)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(gemma), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=2048, sliding_window=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=2))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="flow_prediction", flow_shift=3.0, use_flow_sigmas=True, timestep_spacing="linspace")
    return SanaPipeline(tokenizer=gemma, text_encoder=text_encoder, vae=tiny_dc_ae(seed),
                        transformer=transformer, scheduler=scheduler)


TINY_BUILDERS = {
    "sd3": build_tiny_sd3,
    "sd35_medium": lambda seed=TINY_SEED: build_tiny_sd3(seed, version="3.5"),
    "sd35_large": lambda seed=TINY_SEED: build_tiny_sd3(seed, version="3.5"),
    "flux_schnell": build_tiny_flux,
    "flux_dev": lambda seed=TINY_SEED: build_tiny_flux(seed, guidance_embeds=True),
    "pixart_sigma": build_tiny_pixart_sigma,
    "sana": build_tiny_sana,
}


def build_tiny(family: str, seed: int = TINY_SEED):
    """The tiny pipeline of a family (sdxl: factory/synth/tiny.py's)."""
    if family == "sdxl":
        return build_tiny_sdxl(seed)
    try:
        return TINY_BUILDERS[family](seed)
    except KeyError:
        raise ValueError(f"no tiny pipeline for family {family!r}: expected sdxl or one of "
                         f"{', '.join(TINY_BUILDERS)}") from None


def _use_hub_tokenizer_names(folder: Path) -> None:
    """Name the tokenizer classes in model_index.json as the published model does."""
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    for key, cls in HUB_TOKENIZER_CLASSES.get(index["_class_name"], {}).items():
        index[key] = ["transformers", cls]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def ensure_tiny(family: str, folder: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Build a family's tiny pipeline and `save_pretrained` it (once per node); returns the folder."""
    if family == "sdxl":
        return ensure_tiny_sdxl(folder, seed)
    folder = Path(folder) if folder else tiny_cache_dir() / f"tiny-{family.replace('_', '-')}-s{seed}"

    def save(tmp: Path) -> None:
        build_tiny(family, seed).save_pretrained(tmp)
        _use_hub_tokenizer_names(tmp)

    return save_once(folder, save)


class TinyFamily:
    """The embedded tiny build of a family (random weights, 64 px): `path` null builds it once per
    node and loads it back through from_pretrained, as a local folder of the real model loads."""

    weights_bytes: ClassVar[int] = GiB // 8

    def model_folder(self) -> str:
        return self.path or str(ensure_tiny(self.family.name))

    def native_side(self) -> int:
        return super().native_side() if self.path else TINY_SIZE


@dataclass
class TinySD3(TinyFamily, SD3):
    config_name: ClassVar[str] = "tiny_sd3"


@dataclass
class TinyFlux(TinyFamily, FluxSchnell):
    config_name: ClassVar[str] = "tiny_flux"


@dataclass
class TinyPixArt(TinyFamily, PixArtSigma):
    config_name: ClassVar[str] = "tiny_pixart"


@dataclass
class TinySana(TinyFamily, Sana):
    config_name: ClassVar[str] = "tiny_sana"
