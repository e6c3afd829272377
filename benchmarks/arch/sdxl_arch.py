"""SDXL base 1.0's exact architecture with random weights, built in memory (nothing downloaded).

For measuring throughput where the weights cannot be fetched: the FLOPs and memory traffic of a
forward pass depend on the architecture only. The hyper-parameters live in sdxl.json beside this
file (UNet, VAE, both text encoders, scheduler, and the analytic cost per image); exact.py builds
them, as it builds every other family's.
"""
from __future__ import annotations

import tempfile

import torch

from benchmarks.arch.exact import arch, build_modules


def sdxl_arch() -> dict:
    """sdxl.json: {"modules": {"unet": {"config", "parameters", …}, "vae", …}, "scheduler", "cost_1024px", …}."""
    return arch("sdxl")


def build_sdxl_modules(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """UNet, VAE and both text encoders of SDXL base, random weights, created directly on `device`."""
    try:
        return build_modules("sdxl", device, dtype, seed)
    except Exception as exc:  # a constructor that refuses a default device: build on the CPU, then move
        if str(device) in ("cpu", "meta"):
            raise
        print(f"building on {device} failed ({exc!r}); building on the CPU", flush=True)
        return {k: m.to(device) for k, m in build_modules("sdxl", "cpu", dtype, seed).items()}


def build_sdxl_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0):
    """A StableDiffusionXLPipeline with SDXL base's architecture, random weights, on `device`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from factory.synth.tiny import clip_tokenizer

    sched = {k: v for k, v in sdxl_arch()["scheduler"].items() if k != "class"}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(tmp)
        tokenizer_2 = clip_tokenizer(tmp)
    pipe = StableDiffusionXLPipeline(
        scheduler=EulerDiscreteScheduler(**sched),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **build_sdxl_modules(device, dtype, seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_forward_flops(unet, batch: int = 1, height: int | None = None, width: int | None = None) -> float:
    """FLOPs of one UNet forward (batch samples), counted by torch's FlopCounterMode on real shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet.config
    h = (height // 8) if height else cfg.sample_size
    w = (width // 8) if width else cfg.sample_size
    p = next(unet.parameters())
    text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    kwargs = dict(
        sample=torch.zeros(batch, cfg.in_channels, h, w, device=p.device, dtype=p.dtype),
        timestep=torch.tensor(500.0, device=p.device),
        encoder_hidden_states=torch.zeros(batch, 77, cfg.cross_attention_dim, device=p.device, dtype=p.dtype),
        added_cond_kwargs={
            "text_embeds": torch.zeros(batch, text_dim, device=p.device, dtype=p.dtype),
            "time_ids": torch.zeros(batch, 6, device=p.device, dtype=p.dtype),
        },
    )
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        unet(**kwargs)
    return float(counter.get_total_flops())


def vae_decode_flops(vae, height: int, width: int) -> float:
    """FLOPs of decoding one latent to a height×width image, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(vae.parameters())
    latent = torch.zeros(1, vae.config.latent_channels, height // 8, width // 8, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        vae.decode(latent)
    return float(counter.get_total_flops())
