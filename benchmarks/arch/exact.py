"""The published architectures of every family, built with random weights from benchmarks/arch/<family>.json.

For measuring throughput where the weights cannot be fetched: FLOPs and memory traffic depend on the
architecture only. Each JSON file holds the denoiser's, VAE's and text encoders' configs as the
diffusers release publishes them (transformer/config.json, vae/config.json, text_encoder*/config.json),
the parameter count each builds to, and the published figure it is checked against.

FLOPs are counted by torch's FlopCounterMode (matrix products, convolutions and attention; 2 per
multiply-add; element-wise work is not counted) on the meta device, so nothing is allocated:

    image = steps × passes × denoiser forward (batch 1) + VAE decode + passes × text encoders

where passes is 2 under classifier-free guidance (the negative prompt is encoded and denoised too)
and 1 otherwise (FLUX). `python benchmarks/arch/exact.py` prints the table for every family.
"""
from __future__ import annotations

import importlib
import json
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ARCH_DIR = Path(__file__).resolve().parent
ROOT = ARCH_DIR.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from factory.synth.families import FAMILIES  # noqa: E402

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@lru_cache(maxsize=None)
def _load(family: str) -> str:
    path = ARCH_DIR / f"{family}.json"
    if not path.exists():
        raise ValueError(f"no exact architecture for family {family!r}: expected one of {', '.join(FAMILIES)}")
    return path.read_text()


def arch(family: str) -> dict:
    """The family's architecture file (a fresh copy: callers may change it)."""
    return json.loads(_load(family))


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_module(spec: dict):
    """One module from its {"class", "config_class"?, "config"} entry, on the current default device.
    diffusers models go through from_config, as from_pretrained does: it drops the keys a class no
    longer takes (PixArt-Σ's config.json still names a few)."""
    cls = _resolve(spec["class"])
    if "config_class" in spec:
        return cls(_resolve(spec["config_class"])(**spec["config"]))
    return cls.from_config(spec["config"])


def meta_copy(module):
    """The same architecture on the meta device (for counting FLOPs without memory, and attention
    included: on the CPU, PyTorch's fused attention kernel is not seen by FlopCounterMode)."""
    with torch.device("meta"):
        if hasattr(module, "from_config"):
            return type(module).from_config(module.config)
        return type(module)(module.config)


def build_modules(family: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> dict:
    """Every module of the family's pipeline with random weights, created directly on `device`
    (on 'meta': shapes only, nothing allocated; on a GPU the initialisers run there, in seconds)."""
    spec = arch(family)["modules"]
    torch.manual_seed(seed)
    with torch.device(device):  # each module cast as soon as built: FLUX + T5 never all in float32 at once
        modules = {}
        for name, s in spec.items():
            module = build_module(s).eval().requires_grad_(False)
            modules[name] = module if dtype == torch.float32 else module.to(dtype=dtype)
        return modules


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def vae_scale_factor(vae) -> int:
    channels = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
    return 2 ** (len(channels) - 1)


def _count(fn, module) -> float:
    # Parameters that require grad, passed as call arguments (SANA's scale_shift_table), trip the
    # counter's module tracker under inference_mode: nothing here is trained.
    module.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return float(counter.get_total_flops())


def _zeros(module, *shape, dtype=None):
    p = next(module.parameters())
    return torch.zeros(*shape, device=p.device, dtype=dtype or p.dtype)


def denoiser_inputs(denoiser, height: int, width: int, text_tokens: int, vae_scale: int, batch: int = 1) -> dict:
    """The keyword arguments one forward of the denoiser gets from its pipeline at height × width."""
    cfg = denoiser.config
    h, w = height // vae_scale, width // vae_scale
    name = type(denoiser).__name__
    t = _zeros(denoiser, batch, dtype=torch.float32) + 500.0
    if name == "UNet2DConditionModel":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        return dict(sample=_zeros(denoiser, batch, cfg.in_channels, h, w), timestep=t,
                    encoder_hidden_states=_zeros(denoiser, batch, text_tokens, cfg.cross_attention_dim),
                    added_cond_kwargs={"text_embeds": _zeros(denoiser, batch, pooled),
                                       "time_ids": _zeros(denoiser, batch, 6)})
    if name == "FluxTransformer2DModel":  # latents packed 2×2: 4 × 16 channels per token
        tokens = (h // 2) * (w // 2)
        return dict(hidden_states=_zeros(denoiser, batch, tokens, cfg.in_channels), timestep=t / 1000,
                    encoder_hidden_states=_zeros(denoiser, batch, text_tokens, cfg.joint_attention_dim),
                    pooled_projections=_zeros(denoiser, batch, cfg.pooled_projection_dim),
                    img_ids=_zeros(denoiser, tokens, 3), txt_ids=_zeros(denoiser, text_tokens, 3),
                    guidance=(t * 0 + 3.5) if cfg.guidance_embeds else None)
    kwargs = dict(hidden_states=_zeros(denoiser, batch, cfg.in_channels, h, w), timestep=t)
    if name == "SD3Transformer2DModel":
        kwargs.update(encoder_hidden_states=_zeros(denoiser, batch, text_tokens, cfg.joint_attention_dim),
                      pooled_projections=_zeros(denoiser, batch, cfg.pooled_projection_dim))
    elif name in ("PixArtTransformer2DModel", "SanaTransformer2DModel"):
        kwargs.update(encoder_hidden_states=_zeros(denoiser, batch, text_tokens, cfg.caption_channels),
                      encoder_attention_mask=_zeros(denoiser, batch, text_tokens) + 1)
        if name == "PixArtTransformer2DModel":
            kwargs["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    else:
        raise ValueError(f"no FLOP count for a {name}")
    return kwargs


def denoiser_flops(denoiser, height: int, width: int, text_tokens: int, vae_scale: int) -> float:
    """FLOPs of one denoiser forward for one image (one guidance branch)."""
    kwargs = denoiser_inputs(denoiser, height, width, text_tokens, vae_scale)
    return _count(lambda: denoiser(**kwargs), denoiser)


def vae_decode_flops(vae, height: int, width: int) -> float:
    scale = vae_scale_factor(vae)
    latent = _zeros(vae, 1, vae.config.latent_channels, height // scale, width // scale)
    return _count(lambda: vae.decode(latent), vae)


def text_encoder_flops(encoder, tokens: int) -> float:
    ids = _zeros(encoder, 1, tokens, dtype=torch.long)
    return _count(lambda: encoder(input_ids=ids), encoder)


def image_flops(family: str, modules: dict, height: int, width: int, steps: int | None = None,
                passes: int | None = None) -> dict:
    """FLOPs per image, by part: the family's default steps and guidance passes unless given."""
    spec, fam = arch(family), FAMILIES[family]
    steps = fam.steps if steps is None else steps
    passes = fam.cfg_passes if passes is None else passes
    denoiser = modules[spec["denoiser"]]
    vae = modules["vae"]
    forward = denoiser_flops(denoiser, height, width, spec["denoiser_text_tokens"], vae_scale_factor(vae))
    text = sum(text_encoder_flops(modules[k], spec["modules"][k]["tokens"]) for k in TEXT_ENCODERS if k in modules)
    parts = {"denoiser_forward": forward, "denoiser": steps * passes * forward,
             "vae_decode": vae_decode_flops(vae, height, width), "text_encoders": passes * text}
    parts["total"] = parts["denoiser"] + parts["vae_decode"] + parts["text_encoders"]
    parts.update(steps=steps, passes=passes)
    return parts


def tokenizer_for(encoder):
    """The offline tokenizer a text encoder reads (ids within every real vocabulary)."""
    from factory.synth.tiny_families import tokenizer

    name = type(encoder).__name__
    return tokenizer("clip" if name.startswith("CLIPText") else {"T5EncoderModel": "t5", "Gemma2Model": "gemma"}[name])


def build_pipeline(family: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """The family's diffusers pipeline with its published architecture, random weights, on `device`."""
    import diffusers

    spec = arch(family)
    modules = build_modules(family, device, dtype, seed)
    sched = dict(spec["scheduler"])
    parts = dict(modules, scheduler=_resolve(sched.pop("class")).from_config(sched))
    for key in TEXT_ENCODERS:
        if key in modules:
            parts[key.replace("text_encoder", "tokenizer")] = tokenizer_for(modules[key])
    pipe = getattr(diffusers, spec["pipeline"])(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    for family in FAMILIES:
        spec, fam = arch(family), FAMILIES[family]
        modules = build_modules(family)
        denoiser = spec["denoiser"]
        f = image_flops(family, modules, fam.size, fam.size)
        counts = ", ".join(f"{k} {parameters(m) / 1e9:.3f}B" for k, m in modules.items())
        print(f"{family}: {counts}; {fam.size}², {f['steps']} steps × {f['passes']}: {denoiser} forward "
              f"{f['denoiser_forward'] / 1e12:.2f} TFLOP, image {f['total'] / 1e12:.1f} TFLOP "
              f"(denoiser {f['denoiser'] / 1e12:.1f}, VAE {f['vae_decode'] / 1e12:.2f}, "
              f"text {f['text_encoders'] / 1e12:.2f})", flush=True)


if __name__ == "__main__":
    main()
