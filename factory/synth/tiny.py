"""Tiny SDXL-architecture pipeline and tiny open_clip model with random weights, built offline.

Same classes and the same `from_pretrained` / `pretrained=` paths as SDXL base 1.0 and CLIP, only
small: the embedded defaults (`model=tiny`, `scorer=tiny`), built once per node into the cache.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's (and CLIP's) byte map

from factory.cache import save_once, tiny_cache_dir
from factory.stage import GiB
from factory.synth.diffusion import SDXL

TINY_SEED = 0


def build_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write CLIP's BPE vocab.json + merges.txt from open_clip's bundled merges (no hub; found
    without importing open_clip, which a generator's worker does not need)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(importlib.util.find_spec("open_clip").origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    # Same construction as CLIP's SimpleTokenizer: bytes, bytes + </w>, merges, specials.
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer(folder: str | Path | None = None):
    """CLIP's tokenizer as transformers loads it; converted from the BPE files once, then cached."""
    folder = Path(folder) if folder else tiny_cache_dir() / "clip-tokenizer"

    def save(tmp: Path) -> None:
        build_clip_tokenizer_files(tmp / "bpe")
        tok = CLIPTokenizer.from_pretrained(str(tmp / "bpe"), model_max_length=77, pad_token="<|endoftext|>")
        tok.save_pretrained(str(tmp))

    save_once(folder, save)
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_sdxl_unet(sample_size: int, time_ids: int, pooled_dim: int, cross_attention_dim: int):
    """SDXL's UNet structure at toy width. `time_ids`: 6 for the base (sizes and crop), 5 for the
    refiner (an aesthetic score instead of the target size); each is embedded in 8 dimensions."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + pooled_dim,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )


TINY_SAMPLE_SIZE = 32  # latent side of the tiny pipeline: its images are 2× that (a 2-level VAE)


def build_tiny_sdxl(seed: int = TINY_SEED, sample_size: int = TINY_SAMPLE_SIZE):
    """A StableDiffusionXLPipeline with SDXL's structure at toy width (images of 2*sample_size px)."""
    torch.manual_seed(seed)
    unet = tiny_sdxl_unet(sample_size, time_ids=6, pooled_dim=32, cross_attention_dim=64)  # both encoders' states: 32 + 32
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=2 * sample_size,
    )
    text_cfg = dict(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=32,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg))
    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_refiner(base=None, seed: int = TINY_SEED):
    """A StableDiffusionXLImg2ImgPipeline with the SDXL refiner's structure at toy width: its own
    UNet, conditioned on the second text encoder only and on an aesthetic score (5 time ids), and
    the base's second text encoder and VAE, as SDXL's refiner shares them."""
    base = base or build_tiny_sdxl(seed)
    encoder = base.text_encoder_2.config
    torch.manual_seed(seed + 2)
    # conditioned on the second encoder's hidden states alone
    unet = tiny_sdxl_unet(base.unet.config.sample_size, time_ids=5, pooled_dim=encoder.projection_dim,
                          cross_attention_dim=encoder.hidden_size)
    scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None, tokenizer_2=base.tokenizer_2,
        unet=unet, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )


def ensure_tiny_sdxl(folder: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Build the tiny pipeline and `save_pretrained` it (once per node), returning the folder."""
    folder = Path(folder) if folder else tiny_cache_dir() / f"tiny-sdxl-s{seed}"
    return save_once(folder, lambda p: build_tiny_sdxl(seed).save_pretrained(p))


def ensure_tiny_refiner(folder: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Build the tiny refiner and `save_pretrained` it (once per node), returning the folder."""
    folder = Path(folder) if folder else tiny_cache_dir() / f"tiny-sdxl-refiner-s{seed}"
    return save_once(folder, lambda p: build_tiny_refiner(seed=seed).save_pretrained(p))


@dataclass
class TinySDXL(SDXL):
    """The embedded default: SDXL's architecture at toy width with random weights (64 px images),
    built once per node and loaded through from_pretrained like any SDXL folder. `path` null: the
    embedded build; `tiny_refiner`: a tiny refiner-architecture pipeline takes over (on CPU)."""

    config_name: ClassVar[str] = "tiny_sdxl"
    weights_bytes: ClassVar[int] = GiB // 8

    tiny_refiner: bool = False

    def model_folder(self) -> str:
        return self.path or str(ensure_tiny_sdxl())

    def native_side(self) -> int | None:
        return super().native_side() if self.path else 2 * TINY_SAMPLE_SIZE

    def has_refiner(self) -> bool:
        return self.tiny_refiner or super().has_refiner()

    def refiner_folder(self) -> str:
        return self.refiner_path or str(ensure_tiny_refiner())
