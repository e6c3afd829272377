"""What differs between the diffusers text-to-image families the factory can run: one record each.

Every call argument named here was checked against the installed diffusers 0.42.1 pipelines
(`inspect.signature(Pipeline.__call__)`, tests/test_families.py keeps checking it). Defaults are
the model cards' (each `source` says where); `size_multiple` is the VAE's scale factor times the
denoiser's patch size of the published model (a height or width must be a multiple of it). The
tiny random-weight pipelines of factory/synth/tiny_families.py have the same classes, the same
scale factors and the same call arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

CFG = "classifier-free"  # two denoiser passes per step (conditional and unconditional), negative prompt honoured
EMBEDDED = "embedded"    # guidance scale fed to the denoiser as an input: one pass per step (FLUX.1-dev)
NONE = "none"            # timestep-distilled, guidance ignored (FLUX.1-schnell)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str                 # diffusers class that DiffusionPipeline.from_pretrained returns
    hub_id: str
    denoiser: str                 # pipeline attribute: "unet" or "transformer"
    size_multiple: int            # VAE scale factor × patch size
    guidance: str                 # CFG, EMBEDDED or NONE
    negative_prompt: bool         # whether __call__ takes negative_prompt (and uses it with the default settings)
    max_sequence_length: int | None  # T5/Gemma tokens: the __call__ argument `max_sequence_length`; None: CLIP's 77 only
    steps: int
    guidance_scale: float
    size: int
    source: str                   # where the defaults come from
    call_kwargs: dict = field(default_factory=dict)  # further __call__ arguments the factory should pass

    @property
    def cfg_passes(self) -> int:
        """Denoiser forward passes per step and image at the default guidance."""
        return 2 if self.guidance == CFG and self.guidance_scale > 1 else 1


# PixArt-Σ and SANA snap height/width to a trained aspect-ratio bin, generate there and resize
# back (`use_resolution_binning=True` by default); the factory asks for exact sizes that are
# multiples of size_multiple, so it turns that off: at 1024² the result is the same.
# clean_caption=False: the captions are curated already, and cleaning would need beautifulsoup4 and
# ftfy on every worker (without them diffusers warns and skips it: the same prompt, two behaviours).
NO_BINNING = {"use_resolution_binning": False, "clean_caption": False}

FAMILIES = MappingProxyType({f.name: f for f in [
    Family("sdxl", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", "unet", 8, CFG, True,
           None, 50, 5.0, 1024,
           # model card: `pipe(prompt=prompt)`, i.e. the pipeline's defaults (50 steps, guidance 5.0), 1024²
           "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0 (card example: pipeline defaults)"),
    Family("sd3", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3-medium-diffusers", "transformer", 16,
           CFG, True, 256, 28, 7.0, 1024,
           "https://huggingface.co/docs/diffusers/api/pipelines/stable_diffusion/stable_diffusion_3 "
           "(num_inference_steps=28, guidance_scale=7.0; max_sequence_length defaults to 256)"),
    Family("sd35_medium", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-medium", "transformer", 16,
           CFG, True, 256, 40, 4.5, 1024,
           "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium (card example: "
           "num_inference_steps=40, guidance_scale=4.5)"),
    Family("sd35_large", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-large", "transformer", 16,
           CFG, True, 256, 28, 3.5, 1024,
           "https://huggingface.co/stabilityai/stable-diffusion-3.5-large (card example: "
           "num_inference_steps=28, guidance_scale=3.5)"),
    Family("flux_schnell", "FluxPipeline", "black-forest-labs/FLUX.1-schnell", "transformer", 16, NONE, False,
           256, 4, 0.0, 1024,
           "https://huggingface.co/docs/diffusers/api/pipelines/flux (timestep-distilled: guidance_scale=0, "
           "num_inference_steps=4, max_sequence_length at most 256)"),
    Family("flux_dev", "FluxPipeline", "black-forest-labs/FLUX.1-dev", "transformer", 16, EMBEDDED, False,
           512, 50, 3.5, 1024,
           "https://huggingface.co/docs/diffusers/api/pipelines/flux (guidance-distilled: guidance_scale=3.5, "
           "num_inference_steps=50, max_sequence_length=512)"),
    Family("pixart_sigma", "PixArtSigmaPipeline", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "transformer", 16,
           CFG, True, 300, 20, 4.5, 1024,
           "PixArtSigmaPipeline.__call__ defaults (20 steps, guidance 4.5, max_sequence_length=300), as the "
           "card's example uses them; transformer sample_size 128 × VAE 8 = 1024",
           NO_BINNING),
    Family("sana", "SanaPipeline", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "transformer", 32,
           CFG, True, 300, 20, 4.5, 1024,
           "https://huggingface.co/Efficient-Large-Model/Sana_1600M_1024px_diffusers (card example: "
           "guidance_scale=4.5, num_inference_steps=20, 1024²; max_sequence_length=300 is the default)",
           NO_BINNING),
]})

# FLUX.1 takes negative_prompt only for "true CFG" (true_cfg_scale > 1, off by default): with the
# defaults above one pass per step, so negative_prompt is False for both.


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: expected one of {', '.join(FAMILIES)}") from None


def call_arguments(fam: Family, steps: int | None = None, guidance: float | None = None) -> dict:
    """The keyword arguments (besides prompt, generator, size, output_type) one call should get."""
    out = {"num_inference_steps": fam.steps if steps is None else steps,
           "guidance_scale": fam.guidance_scale if guidance is None else guidance, **fam.call_kwargs}
    if fam.max_sequence_length is not None:
        out["max_sequence_length"] = fam.max_sequence_length
    return out


def size_multiple(pipe) -> int:
    """VAE scale factor × patch size of a loaded pipeline (the tiny ones included). FLUX's
    transformer has patch_size 1 but its pipeline packs 2×2 latents into one token."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    patch = int(getattr(denoiser.config, "patch_size", None) or 1)
    packed = 2 if type(pipe).__name__.startswith("Flux") else 1
    return int(pipe.vae_scale_factor) * patch * packed
