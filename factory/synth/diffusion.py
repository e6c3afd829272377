"""The synthesis stage: a diffusers text-to-image pipeline turning captions into uint8 images."""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from factory import schema as S
from factory.retry import run_in_halves

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# model.attention_backend → the PyTorch SDPA kernel every attention call is held to ("auto": PyTorch picks).
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
# model.inductor_tuning: the inductor settings of PyTorch's "diffusion-fast" SDXL recipe (1×1
# convolutions as matrix products, coordinate-descent tuning of the generated kernels, no epilogue
# fusion). They only matter while compiling, and longer compilation is their price.
INDUCTOR_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                   "coordinate_descent_check_all_directions": True}


def torch_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """The torch dtype of a name or alias in DTYPES; `key` is the config key named in the error."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(sorted(DTYPES))}") from None


def resolve_device(device: str, key: str = "model.device") -> str:
    """'auto' → cuda when there is one, else cpu; `key` is the config key named in the error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key}={device} but this worker sees no CUDA device")
    return device


def load_text_to_image(path: str, dtype: str = "float32", device: str = "cpu", variant: str | None = None):
    """Any diffusers text-to-image pipeline, from a hub id or a local folder ('tiny': the built-in one)."""
    from diffusers import DiffusionPipeline

    if path == "tiny":
        from factory.synth.tiny import ensure_tiny_sdxl

        path = str(ensure_tiny_sdxl())
    kwargs = {"dtype": torch_dtype(dtype, "model.dtype")}
    if variant:
        kwargs["variant"] = variant
    pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_refiner(path: str, base, dtype: str, device: str, variant: str | None = None):
    """SDXL's refiner, sharing the base's second text encoder and VAE as the reference recipe does."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    if path == "tiny":
        from factory.synth.tiny import ensure_tiny_refiner

        path = str(ensure_tiny_refiner())
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


class DiffusionSynth:
    """Stage: batch with id, caption, sample, seed → + image (uint8 N×H×W×3), width, height, reason ("" = ok).

    One torch.Generator per sample, seeded from its (seed, id, sample), so a sample's initial
    latents never depend on how rows are batched. Its pixels are equal whenever it runs in a batch
    of the same size and prompts; across batch sizes (OOM halving, padding to a compiled size)
    kernels may round differently and move pixels slightly (one grey level seen on CPU).
    A batch that runs out of device memory is retried in halves.
    """

    def __init__(
        self,
        path: str = "tiny",
        refiner_path: str | None = None,
        high_noise_frac: float = 0.8,
        device: str = "auto",
        dtype: str = "float32",
        variant: str | None = None,
        torch_threads: int | None = None,
        **options,
    ):
        """Load `path` (and the refiner) and apply `options` (see `_configure`)."""
        if torch_threads:
            torch.set_num_threads(torch_threads)
        device = resolve_device(device)
        pipe = load_text_to_image(path, dtype, device, variant)
        refiner = load_refiner(refiner_path, pipe, dtype, device, variant) if refiner_path else None
        self._configure(pipe, refiner, device, high_noise_frac=high_noise_frac, **options)

    @classmethod
    def from_pipeline(cls, pipe, refiner=None, device: str | None = None, high_noise_frac: float = 0.8, **options) -> "DiffusionSynth":
        """The stage around a pipeline already in memory (benchmarks build SDXL's architecture in place)."""
        self = cls.__new__(cls)
        pipe.set_progress_bar_config(disable=True)
        self._configure(pipe, refiner, device or str(pipe.device), high_noise_frac=high_noise_frac, **options)
        return self

    def _configure(
        self,
        pipe,
        refiner,
        device: str,
        high_noise_frac: float = 0.8,
        height: int | None = None,
        width: int | None = None,
        steps: int = 4,
        guidance: float = 5.0,
        negative_prompt: str = "",
        batch_size: int | None = None,
        channels_last: bool = False,
        fuse_qkv: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        vae_tiling: bool = False,
        attention_backend: str = "auto",
        inductor_tuning: bool = False,
        warmup_steps: int = 2,
    ) -> None:
        if attention_backend != "auto" and attention_backend not in SDPA_BACKENDS:
            raise ValueError(f"model.attention_backend={attention_backend!r}: expected auto or one of {sorted(SDPA_BACKENDS)}")
        self.pipe, self.refiner, self.device = pipe, refiner, device
        self.attention_backend, self.inductor_tuning = attention_backend, inductor_tuning and compile
        self.high_noise_frac = high_noise_frac
        self.height, self.width = height, width
        self.steps, self.guidance, self.negative_prompt = steps, guidance, negative_prompt
        self.oom_retries = 0
        # A compiled graph is specialised to its batch size: short batches are padded up to it
        # (with throw-away prompts) rather than paying a recompilation mid-run.
        self.pad_to = batch_size if compile and batch_size else None
        self._speedups(channels_last, fuse_qkv, compile, compile_mode, vae_tiling)
        self.warmup_s = None
        if compile:
            self.warmup_s = self.warm_up(batch_size or 1, warmup_steps)

    def _speedups(self, channels_last: bool, fuse_qkv: bool, compile: bool, compile_mode: str = "default",
                  vae_tiling: bool = False) -> None:
        pipe = self.pipe
        if fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
        if channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if vae_tiling:  # only when a batch's decode does not fit: tiles cost time and leave seams
            pipe.vae.enable_tiling()
        if compile:
            pipe.unet = torch.compile(pipe.unet, mode=compile_mode, fullgraph=True)
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=compile_mode, fullgraph=True)

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

    def generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """(N,3,H,W) float images in [0,1], on the device."""
        n = len(prompts)
        if self.pad_to and n < self.pad_to:  # keep the compiled batch size; padded rows are dropped below
            prompts = list(prompts) + [""] * (self.pad_to - n)
            seeds = list(seeds) + [0] * (self.pad_to - n)
            return self.generate(prompts, seeds)[:n]
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs = dict(
            prompt=prompts,
            negative_prompt=[self.negative_prompt] * len(prompts) if self.guidance > 1 else None,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=generators,
            height=self.height,
            width=self.width,
        )
        with torch.inference_mode(), self._kernel_choices():
            if self.refiner is None:
                return self.pipe(output_type="pt", **kwargs).images
            latents = self.pipe(output_type="latent", denoising_end=self.high_noise_frac, **kwargs).images
            return self.refiner(
                prompt=prompts,
                negative_prompt=kwargs["negative_prompt"],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generators,
                denoising_start=self.high_noise_frac,
                image=latents,
                output_type="pt",
            ).images

    def output_size(self) -> tuple[int, int]:
        """(height, width) of this stage's images; unset ones take diffusers' own default,
        the denoiser's sample size times the VAE's scale factor (1024 for SDXL)."""
        if self.height and self.width:
            return self.height, self.width
        pipe = self.pipe
        sample = getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size
        default = int(sample) * int(pipe.vae_scale_factor)
        return self.height or default, self.width or default

    def _kernel_choices(self) -> contextlib.ExitStack:
        """The SDPA backend (while compiling it is baked into the graph) and inductor's tuning settings."""
        stack = contextlib.ExitStack()
        if self.attention_backend != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[self.attention_backend])]))
        if self.inductor_tuning:
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(INDUCTOR_TUNING))
        return stack

    def __call__(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        prompts = [str(c) for c in batch[S.CAPTION]]
        seeds = [int(s) for s in batch[S.SEED]]
        n = len(prompts)
        images: list[np.ndarray | None] = [None] * n
        # In flight, "" means "no problem": Ray may turn None in object columns into NaN.
        reasons: list[str] = [""] * n
        details: list[str] = [""] * n

        def run(idx):
            out = self.generate([prompts[i] for i in idx], [seeds[i] for i in idx])
            imgs, finite = to_uint8(out)
            return list(zip(imgs, finite))

        def count_oom():
            self.oom_retries += 1
            # Padding back to the compiled batch size would make every half run out of memory
            # again: after an OOM, smaller batches run as they are (and may recompile once).
            self.pad_to = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()

        results, _ = run_in_halves(run, range(n), on_oom=count_oom)
        # Placeholders take the stage's real output shape even when nothing succeeded: Ray may merge
        # this block with others for the scorer, and one image shape per column keeps it an array.
        shape = next((r[0].shape for r in results if r is not None), None) or (*self.output_size(), 3)
        for i, r in enumerate(results):
            if r is None:
                reasons[i], details[i] = S.R_OOM, "out of device memory even alone"
                continue
            images[i] = r[0]
            if (problem := image_problem(*r)) is not None:
                reasons[i], details[i] = S.R_BAD_IMAGE, problem
        images = [im if im is not None else np.zeros(shape, np.uint8) for im in images]  # black, marked unusable
        out = dict(batch)
        out[S.IMAGE] = np.stack(images)
        out[S.HEIGHT] = np.full(n, shape[0], np.int32)
        out[S.WIDTH] = np.full(n, shape[1], np.int32)
        out[S.REASON] = np.array(reasons, dtype=object)
        out[S.DETAIL] = np.array(details, dtype=object)
        out["_synth_s"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        return out
