"""Tiny SDXL-architecture pipeline with random weights, built offline.

Same classes and the same `from_pretrained` path as SDXL base 1.0, only small: it is the
embedded default (`model=tiny`) and what the tests load back from disk.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import torch

TINY_SEED = 0


def build_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write CLIP's BPE vocab.json + merges.txt from open_clip's bundled merges (no hub)."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    # Same construction as CLIP's SimpleTokenizer: bytes, bytes + </w>, merges, specials.
    from open_clip.tokenizer import bytes_to_unicode

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer(folder: str | Path | None = None):
    """CLIP's tokenizer as transformers loads it; converted from the BPE files once, then cached."""
    from transformers import CLIPTokenizer

    folder = Path(folder) if folder else tiny_cache_dir() / "clip-tokenizer"

    def save(tmp: Path) -> None:
        build_clip_tokenizer_files(tmp / "bpe")
        tok = CLIPTokenizer.from_pretrained(str(tmp / "bpe"), model_max_length=77, pad_token="<|endoftext|>")
        tok.save_pretrained(str(tmp))

    _save_once(folder, save)
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_sdxl_unet(sample_size: int, time_ids: int, pooled_dim: int, cross_attention_dim: int):
    """SDXL's UNet structure at toy width. `time_ids`: 6 for the base (sizes and crop), 5 for the
    refiner (an aesthetic score instead of the target size); each is embedded in 8 dimensions."""
    from diffusers import UNet2DConditionModel

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
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

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
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

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


def _save_once(folder: Path, save) -> Path:
    """Save into `folder` unless a complete copy is there; concurrent callers never see half a copy."""
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    save(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.rename(tmp, folder)
    except OSError:  # another process won the race: its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_cache_dir() -> Path:
    return Path(os.environ.get("FACTORY_CACHE", Path.home() / ".cache" / "synth-factory"))


def ensure_tiny_sdxl(folder: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Build the tiny pipeline and `save_pretrained` it (once per node), returning the folder."""
    folder = Path(folder) if folder else tiny_cache_dir() / f"tiny-sdxl-s{seed}"
    return _save_once(folder, lambda p: build_tiny_sdxl(seed).save_pretrained(p))


def ensure_tiny_refiner(folder: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Build the tiny refiner and `save_pretrained` it (once per node), returning the folder."""
    folder = Path(folder) if folder else tiny_cache_dir() / f"tiny-sdxl-refiner-s{seed}"
    return _save_once(folder, lambda p: build_tiny_refiner(seed=seed).save_pretrained(p))


# ---- tiny open_clip model -------------------------------------------------------------

TINY_CLIP_NAME = "factory-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_clip() -> str:
    """Make open_clip know the tiny architecture by name (as it knows 'ViT-L-14-336')."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    if TINY_CLIP_NAME not in _MODEL_CONFIGS:
        _MODEL_CONFIGS[TINY_CLIP_NAME] = json.loads(json.dumps(TINY_CLIP_CONFIG))
    assert TINY_CLIP_NAME in open_clip.list_models()
    return TINY_CLIP_NAME


def ensure_tiny_clip(path: str | Path | None = None, seed: int = TINY_SEED) -> Path:
    """Save a random-weight tiny open_clip checkpoint (safetensors) once, returning its path."""
    import open_clip
    from safetensors.torch import save_file

    path = Path(path) if path else tiny_cache_dir() / f"tiny-clip-s{seed}" / "open_clip_model.safetensors"
    register_tiny_clip()

    def save(folder: Path) -> None:
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / path.name))

    _save_once(path.parent, save)
    return path
