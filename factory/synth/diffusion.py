"""The synthesis stage: a diffusers text-to-image pipeline turning captions into uint8 images.

`Generator` holds what every diffusers text-to-image family shares (loading through
`from_pretrained`, seeds, batching, OOM halving, compilation); a family is a subclass that
declares what differs (factory/synth/families.py).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional

import diffusers
import numpy as np
import safetensors.torch
import torch
import torch._inductor.config as inductor_config
from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline
from torch.nn.attention import SDPBackend, sdpa_kernel

from factory import schema as S
from factory.checks import number
from factory.devices import resolve_device, torch_dtype
from factory.errors import SettingError
from factory.retry import run_in_halves
from factory.stage import PROCESS_BYTES, GiB, Resources, Stage
from factory.synth.families import FAMILIES, NONE, Family
from factory.synth.fp8 import (
    QUANTIZE,
    check_fp8_device,
    check_torchao,
    quantize_denoiser,
)
from factory.weights import check_weight_folder

log = logging.getLogger(__name__)


# model.attention_backend → the PyTorch SDPA kernel every attention call is held to ("auto": PyTorch picks).
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
# model.inductor_tuning: the inductor settings of PyTorch's "diffusion-fast" SDXL recipe (1×1
# convolutions as matrix products, coordinate-descent tuning of the generated kernels, no epilogue
# fusion). They only matter while compiling, and longer compilation is their price.
INDUCTOR_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                   "coordinate_descent_check_all_directions": True}
# model.scheduler: the diffusers schedulers a UNet family may swap in (step-distilled recipes name
# theirs: SDXL-Lightning EulerDiscreteScheduler, Hyper-SD DDIMScheduler or TCDScheduler, LCM-LoRA
# LCMScheduler), each built from the pipeline's own scheduler config with model.scheduler_config's
# overrides, whose keys and values are these.
SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
              "LCMScheduler", "TCDScheduler")
SCHEDULER_OPTIONS = {"timestep_spacing": ("leading", "linspace", "trailing"), "use_karras_sigmas": (True, False),
                     "prediction_type": ("epsilon", "v_prediction"), "steps_offset": (0, 1)}


def load_text_to_image(path: str, dtype: str = "float32", device: str = "cpu", variant: str | None = None):
    """Any diffusers text-to-image pipeline, from a hub id or a local folder."""
    kwargs = {"dtype": torch_dtype(dtype, "model.dtype")}
    if variant:
        kwargs["variant"] = variant
    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_refiner(path: str, base, dtype: str, device: str, variant: str | None = None):
    """SDXL's refiner, sharing the base's second text encoder and VAE as the reference recipe does."""
    kwargs = {"dtype": torch_dtype(dtype, "model.dtype"), "text_encoder_2": base.text_encoder_2, "vae": base.vae}
    if variant:
        kwargs["variant"] = variant
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(path, **kwargs)
    refiner.set_progress_bar_config(disable=True)
    return refiner.to(device)


def to_uint8(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N,3,H,W) floats in [0,1] → (N,H,W,3) uint8 on the host, and a per-image 'finite' mask."""
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    images = torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    out = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out.cpu().numpy(), finite.cpu().numpy()


def image_problem(image: np.ndarray, finite: bool) -> str | None:
    if not finite:
        return "NaN or Inf in the decoded image"
    if image.max() == image.min():
        return f"a single colour ({int(image.flat[0])})"
    return None


def folder_bytes(path: str | None) -> int | None:
    """Bytes of the weight files in a local model folder (None: not a local folder)."""
    if not path or not os.path.isdir(path):
        return None
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())


def check_family_settings(g: "Generator") -> None:
    """Settings the family has no use for are refused, not silently ignored."""
    fam = g.family
    if g.negative_prompt and not fam.negative_prompt:
        raise SettingError("negative_prompt", f" is set, but {fam.name} takes no negative prompt ({fam.guidance} guidance)")
    if fam.guidance == NONE and g.guidance:
        raise SettingError("guidance", f"={g.guidance}: {fam.name} is timestep-distilled and ignores guidance; leave it 0")
    if g.channels_last and fam.denoiser != "unet":
        raise SettingError("channels_last", f"=true: it speeds up a UNet's convolutions; {fam.name}'s denoiser is a transformer")
    if g.max_sequence_length is not None and fam.max_sequence_length is None:
        raise SettingError("max_sequence_length", f" is set, but {fam.name} reads prompts through CLIP's 77 tokens only")


def check_folder(g: "Generator") -> None:
    """A local model folder must hold the family's pipeline (read from model_index.json, before
    anything loads); a hub id is checked when it loads."""
    index = os.path.join(g.path or "", "model_index.json")
    if not (g.path and os.path.isfile(index)):
        return
    try:
        with open(index) as f:
            found = json.load(f).get("_class_name")
    except (OSError, ValueError) as exc:
        raise SettingError("path", f"={g.path}: its model_index.json cannot be read ({exc})") from None
    check_pipeline_class(g, found)
    check_weight_folder(g.path, "path")


def check_pipeline_class(g: "Generator", found: str | None) -> None:
    if found != g.family.pipeline:
        hint = next((f" (model={f.name}?)" for f in FAMILIES.values() if f.pipeline == found), "")
        what = "not a text-to-image pipeline this factory runs" if not hint else f"{found}"
        raise SettingError("path", f"={g.path} holds {found or 'no pipeline'}: {what}; {g.family.name} needs {g.family.pipeline}{hint}")


def check_model_changes(g: "Generator") -> None:
    """model.quantize, lora, denoiser_path, scheduler: the values, and what a job can know before Ray starts."""
    if g.quantize is not None:
        if g.quantize not in QUANTIZE:
            raise SettingError("quantize", f"={g.quantize!r}: expected null or one of {', '.join(QUANTIZE)}")
        if g.device != "auto" or torch.cuda.is_available():
            check_fp8_device(resolve_device(g.device) if g.device == "auto" else g.device, "quantize")
        else:
            raise SettingError("quantize", f"=fp8 needs model.device=cuda (a GPU of compute capability 8.9 or newer), got {g.device}")
        check_torchao("quantize")
    if g.lora is None:
        for key, value, default in (("lora_weight_name", g.lora_weight_name, None), ("lora_scale", g.lora_scale, 1.0)):
            if value != default:
                raise SettingError(key, f"={value} is set, but model.lora is not")
    else:
        number("lora_scale", g.lora_scale, low=0)
        if importlib.util.find_spec("peft") is None:
            raise SettingError("lora", f"={g.lora}: diffusers loads LoRA weights through peft, which is not installed: "
                                       "pip install 'synth-factory[lora]' (peft)")
    for key in ("lora", "denoiser_path"):
        value = getattr(g, key)
        if value is not None and (not value or (value.startswith(("/", ".")) and not os.path.exists(value))):
            raise SettingError(key, f"={value!r}: no such file or folder")
    if (g.scheduler or g.scheduler_config) and g.family.denoiser != "unet":
        key = "scheduler" if g.scheduler else "scheduler_config"
        raise SettingError(key, f" is set, but {g.family.name} runs a flow-matching transformer: only UNet families "
                                "(sdxl) take another scheduler")
    if g.scheduler is not None and g.scheduler not in SCHEDULERS:
        raise SettingError("scheduler", f"={g.scheduler!r}: expected null or one of {', '.join(SCHEDULERS)}")
    for key, value in (g.scheduler_config or {}).items():
        allowed = SCHEDULER_OPTIONS.get(key)
        if allowed is None:
            raise SettingError("scheduler_config", f" has {key}: expected keys among {', '.join(SCHEDULER_OPTIONS)}")
        if value not in allowed or type(value) is not type(allowed[0]):
            raise SettingError(f"scheduler_config.{key}", f"={value!r}: expected one of {', '.join(map(str, allowed))}")


def replace_denoiser(pipe, attr: str, path: str) -> None:
    """Swap the pipeline's denoiser: `path` a diffusers model folder or hub id (or a pipeline folder:
    its `attr` subfolder), loaded with the denoiser class's from_pretrained, or a .safetensors file
    of the denoiser's own state dict (SDXL-Lightning's sdxl_lightning_4step_unet.safetensors)."""
    old = getattr(pipe, attr)
    if path.endswith(".safetensors") and os.path.isfile(path):
        state = safetensors.torch.load_file(path)
        ours = old.state_dict()
        missing, unexpected = set(ours) - set(state), set(state) - set(ours)
        shapes = [k for k in set(ours) & set(state) if ours[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            raise SettingError("denoiser_path", f"={path} is not a state dict of this {type(old).__name__} "
                                                f"({len(missing)} keys missing, {len(unexpected)} unexpected, {len(shapes)} of another shape)")
        old.load_state_dict(state)
        return
    sub = attr if os.path.isfile(os.path.join(path, "model_index.json")) else None
    new = type(old).from_pretrained(path, subfolder=sub, dtype=old.dtype)
    if new.config.get("in_channels") != old.config.get("in_channels") or new.config.get("sample_size") != old.config.get("sample_size"):
        raise SettingError("denoiser_path", f"={path}: its {type(new).__name__} does not fit this pipeline "
                                            f"(in_channels, sample_size {new.config.get('in_channels')}, {new.config.get('sample_size')} "
                                            f"against {old.config.get('in_channels')}, {old.config.get('sample_size')})")
    pipe.register_modules(**{attr: new.to(old.device)})


def fuse_lora(pipe, lora: str, weight_name: str | None, scale: float) -> None:
    """Load a LoRA (hub id + weight_name, a local folder, or a .safetensors file) with diffusers'
    load_lora_weights, fuse it into the weights at `scale` and drop the adapter layers: the
    pipeline then runs (and compiles) exactly like one without a LoRA."""
    if not hasattr(pipe, "load_lora_weights"):
        raise SettingError("model.lora", f"={lora}: {type(pipe).__name__} has no LoRA loader")
    if os.path.isfile(lora):
        lora, weight_name = os.path.dirname(lora) or ".", os.path.basename(lora)
    pipe.load_lora_weights(lora, weight_name=weight_name, adapter_name="factory_lora")
    pipe.fuse_lora(lora_scale=scale, adapter_names=["factory_lora"])
    pipe.unload_lora_weights()


def swap_scheduler(pipe, name: str | None, overrides: dict | None) -> None:
    """The pipeline's scheduler replaced by `name` (default: its own class), from its config with `overrides`."""
    cls = getattr(diffusers, name) if name else type(pipe.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **(overrides or {}))


@dataclass
class Generator(Stage):
    """Stage: batch with id, caption, sample, seed → + image (uint8 N×H×W×3), width, height, reason ("" = ok).

    Any diffusers text-to-image pipeline, loaded through `from_pretrained` from a hub id or a local
    folder. One torch.Generator per sample, seeded from its (seed, id, sample), so a sample's
    initial latents never depend on how rows are batched. Its pixels are equal whenever it runs in
    a batch of the same size and prompts; across batch sizes (OOM halving, padding to a compiled
    size) kernels may round differently and move pixels slightly (one grey level seen on CPU).
    A batch that runs out of device memory is retried in halves.

    A family (a subclass) declares what differs in `family` (factory/synth/families.py: the
    pipeline class, the denoiser that compile and channels_last act on, the size multiple, the
    guidance kind, whether it takes a negative prompt, its text length and extra call arguments)
    and `weights_bytes` (its weights, for the memory it asks Ray for when they are not local).
    Settings that do not apply to the family are refused when the stage is built.
    """

    pool: ClassVar[str] = "synth"
    batch_format: ClassVar[str] = "numpy"
    needs: ClassVar[Resources] = Resources(cpus=0.5, gpus=1.0, gpu_share=None, threads=1)
    reasons: ClassVar[tuple[str, ...]] = (S.R_BAD_IMAGE, S.R_OOM)
    speed_only: ClassVar[frozenset[str]] = frozenset({
        "device", "batch_size", "channels_last", "fuse_qkv", "compile", "compile_mode", "attention_backend",
        "inductor_tuning", "warmup_steps"})
    family: ClassVar[Family] = FAMILIES["sdxl"]
    weights_bytes: ClassVar[int] = 8 * GiB

    name: str = "generator"  # the generator's name in outputs (the model group's name)
    path: Optional[str] = None  # hub id or local diffusers folder
    device: str = "auto"
    dtype: str = "float32"
    variant: Optional[str] = None  # e.g. fp16: the hub's fp16 weight files
    height: Optional[int] = None  # null: the model's native size
    width: Optional[int] = None
    steps: int = 4
    guidance: float = 5.0
    negative_prompt: str = ""
    batch_size: int = 8  # the compiled batch shape: warmed up once, short batches padded
    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False  # torch.compile of the denoiser and the VAE decoder, warmed once per actor
    compile_mode: str = "default"
    vae_tiling: bool = False  # decode in tiles only when a batch's decode does not fit in memory
    attention_backend: str = "auto"  # auto | flash | efficient | cudnn | math: the SDPA kernel every attention uses
    inductor_tuning: bool = False  # with compile: inductor's diffusion-fast settings (longer compilation)
    warmup_steps: int = 2
    max_sequence_length: Optional[int] = None  # text tokens (T5 / Gemma) per prompt; null: the family's own
    # Sample-changing model settings (fingerprinted), applied in setup in this order after loading:
    denoiser_path: Optional[str] = None  # a replacement denoiser: diffusers model folder / hub id, or a .safetensors state dict
    lora: Optional[str] = None  # a LoRA fused into the weights: hub id (+ lora_weight_name), local folder or .safetensors file
    lora_weight_name: Optional[str] = None  # the file in `lora`'s repo or folder (e.g. sdxl_lightning_4step_lora.safetensors)
    lora_scale: float = 1.0  # the LoRA's weight when fused (Hyper-SD's CFG LoRAs: 0.125)
    scheduler: Optional[str] = None  # another diffusers scheduler class (SCHEDULERS); null: the model's own
    scheduler_config: Dict[str, Any] = field(default_factory=dict)  # overrides of its config (SCHEDULER_OPTIONS), e.g. {timestep_spacing: trailing}
    quantize: Optional[str] = None  # null | fp8: torchao float8 of the denoiser's linear layers (CUDA, capability >= 8.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.family.size_multiple
        for key in ("height", "width"):
            v = getattr(self, key)
            number(key, v, whole=True, low=m, nullable=True)
            if v is not None and v % m:
                raise SettingError(key, f" must be a multiple of {m} ({self.family.name}'s VAE scale × patch size), got {v}")
        number("steps", self.steps, whole=True, low=1)
        number("batch_size", self.batch_size, whole=True, low=1)
        number("guidance", self.guidance, low=0)
        number("max_sequence_length", self.max_sequence_length, whole=True, low=1, nullable=True)
        if self.attention_backend != "auto" and self.attention_backend not in SDPA_BACKENDS:
            raise SettingError("attention_backend", f"={self.attention_backend!r}: expected auto or one of {sorted(SDPA_BACKENDS)}")
        torch_dtype(self.dtype, "model.dtype")
        check_family_settings(self)
        check_model_changes(self)
        check_folder(self)

    # ---- declarations ---------------------------------------------------------------------

    def label(self) -> str:
        return f"generate_{self.name}"

    def model_folder(self) -> str:
        """Where from_pretrained loads the model: `path` (a family may build one, see TinySDXL)."""
        if not self.path:
            raise SettingError("path", " is not set: a hub id or a local diffusers folder")
        return self.path

    def native_side(self) -> int:
        """The image side the model makes by default: its denoiser's sample size times the VAE's
        scale, read from a local folder's configs without loading it, else the family's."""
        try:
            with open(os.path.join(self.path or "", self.family.denoiser, "config.json")) as f:
                sample = int(json.load(f)["sample_size"])
            with open(os.path.join(self.path or "", "vae", "config.json")) as f:
                levels = len(json.load(f)["block_out_channels"])
        except (OSError, KeyError, TypeError, ValueError):
            return self.family.size  # a hub id (nothing read offline), or a config without it: the model card's size
        return sample * 2 ** (levels - 1)

    def memory_bytes(self) -> int:
        """The process, the weights (loaded through host memory even for a GPU) and a batch of images."""
        weights = folder_bytes(self.path) or self.weights_bytes
        side = max(self.height or 0, self.width or 0) or self.native_side() or 1024
        return int(PROCESS_BYTES + weights + self.batch_size * side * side * 3 * 4)

    # ---- work -----------------------------------------------------------------------------

    def setup(self) -> None:
        device = resolve_device(self.device)
        if self.quantize:  # before anything loads: this worker's GPU, and torchao
            check_fp8_device(device)
            check_torchao()
        self.attach(self.load(device), device)

    def load(self, device: str):
        pipe = load_text_to_image(self.model_folder(), self.dtype, device, self.variant)
        check_pipeline_class(self, type(pipe).__name__)
        self.adapt(pipe)
        return pipe

    def adapt(self, pipe) -> None:
        """The sample-changing model settings, on a loaded pipeline: replacement denoiser, fused
        LoRA, scheduler (model.quantize comes later, with the speed settings, before compile)."""
        if self.denoiser_path:
            replace_denoiser(pipe, self.family.denoiser, self.denoiser_path)
        if self.lora:
            fuse_lora(pipe, self.lora, self.lora_weight_name, self.lora_scale)
        if self.scheduler or self.scheduler_config:
            swap_scheduler(pipe, self.scheduler, self.scheduler_config)

    @classmethod
    def from_pipeline(cls, pipe, parts: dict | None = None, **fields) -> "Generator":
        """The stage around a pipeline already in memory (benchmarks build exact architectures in
        place); `parts`: a family's other loaded parts (SDXL's refiner)."""
        self = cls(**{"device": str(pipe.device), **fields})
        self.__dict__.update(parts or {})
        pipe.set_progress_bar_config(disable=True)
        self.adapt(pipe)
        self.attach(pipe, resolve_device(self.device))
        self._ready = True
        return self

    def attach(self, pipe, device: str) -> None:
        """Take `pipe` as this stage's pipeline: speed settings applied, compiled graphs warmed."""
        self.pipe, self._device = pipe, device
        self.oom_retries = 0
        # A compiled graph is specialised to its batch size: short batches are padded up to it
        # (with throw-away prompts) rather than paying a recompilation mid-run.
        self.pad_to = self.batch_size if self.compile else None
        self._speedups()
        self.warmup_s = self.warm_up(self.batch_size, self.warmup_steps) if self.compile else None

    def _speedups(self) -> None:
        pipe = self.pipe
        denoiser = getattr(pipe, self.family.denoiser)
        if self.fuse_qkv:  # SDXL's pipeline fuses its UNet's and VAE's; the transformers fuse their own
            (pipe if hasattr(pipe, "fuse_qkv_projections") else denoiser).fuse_qkv_projections()
        if self.channels_last:
            denoiser.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if self.vae_tiling:  # only when a batch's decode does not fit: tiles cost time and leave seams
            pipe.vae.enable_tiling()
        if self.quantize:  # after fusing QKV (the fused projections are quantized), before compiling
            log.info("model.quantize=fp8: %d linear layers of the %s in float8", quantize_denoiser(denoiser), self.family.denoiser)
        if self.compile:
            setattr(pipe, self.family.denoiser, torch.compile(denoiser, mode=self.compile_mode, fullgraph=True))
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=self.compile_mode, fullgraph=True)

    def warm_up(self, batch_size: int, steps: int = 2) -> float:
        """One throw-away batch at the working size, so compilation is paid here, once per actor."""
        t0 = time.perf_counter()
        saved = self.steps
        self.steps = max(1, steps)
        try:
            to_uint8(self.generate(["warm-up"] * batch_size, list(range(batch_size))))
        finally:
            self.steps = saved
        warm = time.perf_counter() - t0
        log.info("synthesis warm-up (compilation) took %.1f s", warm)
        return warm

    def call_kwargs(self, prompts: list[str], generators: list) -> dict:
        """The pipeline's arguments for one batch, as the family takes them."""
        fam = self.family
        kwargs = dict(prompt=prompts, num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generators,
                      height=self.height, width=self.width, **fam.call_kwargs)
        if fam.negative_prompt:  # only with guidance is there a negative branch to condition
            kwargs["negative_prompt"] = [self.negative_prompt] * len(prompts) if self.guidance > 1 else None
        if fam.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.max_sequence_length or fam.max_sequence_length
        return kwargs

    def generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """(N,3,H,W) float images in [0,1], on the device."""
        n = len(prompts)
        if self.pad_to and n < self.pad_to:  # keep the compiled batch size; padded rows are dropped below
            prompts = list(prompts) + [""] * (self.pad_to - n)
            seeds = list(seeds) + [0] * (self.pad_to - n)
            return self.generate(prompts, seeds)[:n]
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode(), self._kernel_choices():
            return self.run_pipeline(self.call_kwargs(prompts, generators))

    def run_pipeline(self, kwargs: dict) -> torch.Tensor:
        return self.pipe(output_type="pt", **kwargs).images

    def output_size(self) -> tuple[int, int]:
        """(height, width) of this stage's images; unset ones take diffusers' own default,
        the denoiser's sample size times the VAE's scale factor (1024 for SDXL)."""
        if self.height and self.width:
            return self.height, self.width
        pipe = self.pipe
        sample = getattr(pipe, "default_sample_size", None) or getattr(pipe, self.family.denoiser).config.sample_size
        default = int(sample) * int(pipe.vae_scale_factor)
        return self.height or default, self.width or default

    def _kernel_choices(self) -> contextlib.ExitStack:
        """The SDPA backend (while compiling it is baked into the graph) and inductor's tuning settings."""
        stack = contextlib.ExitStack()
        if self.attention_backend != "auto":
            stack.enter_context(sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[self.attention_backend])]))
        if self.inductor_tuning and self.compile:
            stack.enter_context(inductor_config.patch(INDUCTOR_TUNING))
        return stack

    def _after_oom(self) -> None:
        self.oom_retries += 1
        # Padding back to the compiled batch size would make every half run out of memory
        # again: after an OOM, smaller batches run as they are (and may recompile once).
        self.pad_to = None
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

    def process(self, batch: dict) -> dict:
        """Images for the rows of this generator; rows of other generators (several in one run,
        one pool each, chained) pass through as they are."""
        names = batch.get(S.GENERATOR)
        mine = np.flatnonzero(np.asarray([str(g) == self.name for g in names])) if names is not None else None
        if mine is None or len(mine) == len(batch[S.CAPTION]):
            return self.synthesize(batch)
        if not len(mine):
            return with_placeholders(batch)
        made = self.synthesize({k: np.asarray(v)[mine] for k, v in batch.items()})
        return merge_rows(with_placeholders(batch), made, mine)

    def synthesize(self, batch: dict) -> dict:
        prompts = [str(c) for c in batch[S.CAPTION]]
        seeds = [int(s) for s in batch[S.SEED]]
        n = len(prompts)

        def run(idx):
            imgs, finite = to_uint8(self.generate([prompts[i] for i in idx], [seeds[i] for i in idx]))
            return list(zip(imgs, finite))

        results, _ = run_in_halves(run, range(n), on_oom=self._after_oom)
        return with_images(batch, results, self.output_size())


IMAGE_COLUMNS = (S.IMAGE, S.HEIGHT, S.WIDTH, S.REASON, S.DETAIL)
WAITING = np.zeros((0, 0, 3), np.uint8)  # the image of a row whose generator has not run yet


def with_placeholders(batch: dict) -> dict:
    """`batch` with the image columns, kept where an earlier generator filled them."""
    n = len(batch[S.CAPTION])
    out = dict(batch)
    if S.IMAGE not in batch:
        out[S.IMAGE] = object_array([WAITING] * n)
        out[S.HEIGHT] = np.zeros(n, np.int32)
        out[S.WIDTH] = np.zeros(n, np.int32)
        out[S.REASON] = np.array([""] * n, dtype=object)
        out[S.DETAIL] = np.array([""] * n, dtype=object)
    return out


def object_array(items: list) -> np.ndarray:
    a = np.empty(len(items), dtype=object)
    a[:] = items
    return a


def merge_rows(out: dict, made: dict, rows: np.ndarray) -> dict:
    """`out` with `made`'s image columns written into `rows`: images of several shapes become
    an object column (Ray keeps it as a variable-shaped tensor column)."""
    images = object_array(list(out[S.IMAGE]))
    for j, i in enumerate(rows):
        images[i] = made[S.IMAGE][j]
    shapes = {im.shape for im in images}
    out[S.IMAGE] = np.stack(list(images)) if len(shapes) == 1 else images
    for col in IMAGE_COLUMNS[1:]:
        column = np.array(out[col], dtype=made[col].dtype)
        column[rows] = made[col]
        out[col] = column
    return out


def with_images(batch: dict, results: list, size: tuple[int, int]) -> dict:
    """`batch` plus the image, width, height, reason and detail columns of `results`: one
    (image, finite) pair per row, None for a row that ran out of memory even alone."""
    n = len(results)
    # In flight, "" means "no problem": Ray may turn None in object columns into NaN.
    reasons, details = [""] * n, [""] * n
    # Placeholders take the stage's real output shape even when nothing succeeded: Ray may merge
    # this block with others for the scorer, and one image shape per column keeps it an array.
    shape = next((r[0].shape for r in results if r is not None), None) or (*size, 3)
    images = []
    for i, r in enumerate(results):
        if r is None:
            reasons[i], details[i] = S.R_OOM, "out of device memory even alone"
            images.append(np.zeros(shape, np.uint8))  # black, marked unusable
            continue
        images.append(r[0])
        if (problem := image_problem(*r)) is not None:
            reasons[i], details[i] = S.R_BAD_IMAGE, problem
    out = dict(batch)
    out[S.IMAGE] = np.stack(images)
    out[S.HEIGHT] = np.full(n, shape[0], np.int32)
    out[S.WIDTH] = np.full(n, shape[1], np.int32)
    out[S.REASON] = np.array(reasons, dtype=object)
    out[S.DETAIL] = np.array(details, dtype=object)
    return out


@dataclass
class SDXL(Generator):
    """Stable Diffusion XL (the paper's model), optionally with its refiner taking over the last
    1 - high_noise_frac of the schedule (the reference recipe's ensemble of experts)."""

    config_name: ClassVar[str] = "sdxl"
    weights_bytes: ClassVar[int] = 7 * GiB  # base 1.0 in fp16: UNet 5.1 GB, text encoders 1.6 GB, VAE 0.2 GB

    refiner = None  # the loaded refiner pipeline (not a setting)

    refiner_path: Optional[str] = None  # e.g. stabilityai/stable-diffusion-xl-refiner-1.0
    high_noise_frac: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.has_refiner() and not 0 < self.high_noise_frac < 1:
            raise SettingError("high_noise_frac", f" must be a number between 0 and 1 with a refiner, got {self.high_noise_frac!r}")

    def has_refiner(self) -> bool:
        return bool(self.refiner_path)

    def refiner_folder(self) -> str:
        return self.refiner_path

    def memory_bytes(self) -> int:
        extra = (folder_bytes(self.refiner_folder()) or self.weights_bytes) if self.has_refiner() else 0
        return super().memory_bytes() + extra

    def load(self, device: str):
        pipe = super().load(device)
        self.refiner = load_refiner(self.refiner_folder(), pipe, self.dtype, device, self.variant) if self.has_refiner() else None
        return pipe

    def run_pipeline(self, kwargs: dict) -> torch.Tensor:
        if self.refiner is None:
            return super().run_pipeline(kwargs)
        latents = self.pipe(output_type="latent", denoising_end=self.high_noise_frac, **kwargs).images
        return self.refiner(
            prompt=kwargs["prompt"],
            negative_prompt=kwargs["negative_prompt"],
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=kwargs["generator"],
            denoising_start=self.high_noise_frac,
            image=latents,
            output_type="pt",
        ).images
