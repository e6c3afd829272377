"""The diffusers text-to-image families beside SDXL (factory/synth/diffusion.py): each a class that
names its record in factory/synth/families.py (what differs: denoiser, size multiple, guidance,
negative prompt, text length, call arguments) and the bytes of its weights, and a conf/model file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from factory.stage import GiB
from factory.synth.diffusion import Generator
from factory.synth.families import FAMILIES, Family

# Bytes of each published model's weights in 16-bit (denoiser + text encoders + VAE): what an actor
# holds in host memory while it loads them.
T5_XXL = 9.5 * GiB


@dataclass
class SD3(Generator):
    """Stable Diffusion 3 medium (SynthVLM's code default): MMDiT, CLIP-L + CLIP-G + T5-XXL."""

    config_name: ClassVar[str] = "sd3"
    family: ClassVar[Family] = FAMILIES["sd3"]
    weights_bytes: ClassVar[int] = int(4 * GiB + 1.6 * GiB + T5_XXL)


@dataclass
class SD35Medium(SD3):
    config_name: ClassVar[str] = "sd35_medium"
    family: ClassVar[Family] = FAMILIES["sd35_medium"]
    weights_bytes: ClassVar[int] = int(4.6 * GiB + 1.6 * GiB + T5_XXL)


@dataclass
class SD35Large(SD3):
    config_name: ClassVar[str] = "sd35_large"
    family: ClassVar[Family] = FAMILIES["sd35_large"]
    weights_bytes: ClassVar[int] = int(16.2 * GiB + 1.6 * GiB + T5_XXL)


@dataclass
class FluxSchnell(Generator):
    """FLUX.1-schnell: timestep-distilled, 4 steps, no guidance."""

    config_name: ClassVar[str] = "flux_schnell"
    family: ClassVar[Family] = FAMILIES["flux_schnell"]
    weights_bytes: ClassVar[int] = int(23.8 * GiB + 0.25 * GiB + T5_XXL)


@dataclass
class FluxDev(FluxSchnell):
    """FLUX.1-dev: guidance-distilled, the guidance scale an input of the transformer (one pass a step)."""

    config_name: ClassVar[str] = "flux_dev"
    family: ClassVar[Family] = FAMILIES["flux_dev"]


@dataclass
class PixArtSigma(Generator):
    config_name: ClassVar[str] = "pixart_sigma"
    family: ClassVar[Family] = FAMILIES["pixart_sigma"]
    weights_bytes: ClassVar[int] = int(1.2 * GiB + T5_XXL)


@dataclass
class Sana(Generator):
    config_name: ClassVar[str] = "sana"
    family: ClassVar[Family] = FAMILIES["sana"]
    weights_bytes: ClassVar[int] = int(3.2 * GiB + 5.2 * GiB)  # SANA 1.6B + Gemma-2-2B
