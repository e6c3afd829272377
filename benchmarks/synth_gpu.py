"""Images/s of SDXL base (exact architecture, random weights): SynthVLM's loop vs the factory's stage.

(a) reference: one prompt per call, fp16, eager, PIL output, as SynthVLM's code does it;
(b) the factory's generator stage (SDXL) at its best settings: batched prompts (both guidance branches in
    one UNet call), bf16, SDPA attention, channels-last, fused QKV, torch.compile of UNet and VAE
    decoder (compilation paid once, in the constructor: reported, not timed), uint8 output.
`--ablate` adds each lever in turn; each `--variant key=value[,key=value]` recompiles (b) with those
stage options changed (e.g. attention_backend=cudnn, channels_last=false, batch_size=16,
inductor_tuning=true,compile_mode=max-autotune-no-cudagraphs, compile_mode=reduce-overhead for CUDA
graphs, quantize=fp8, steps=4,guidance=0,scheduler=EulerDiscreteScheduler,scheduler_config.timestep_spacing=trailing
for a step-distilled recipe's cost) and times it; quantize=fp8 variants run last (they quantize the
UNet in place). `--compare KEY=VALUE[,...]` measures what such a change does to the pixels: the same
captions and seeds through (b) and through (b) with the change, then the mean absolute difference
(grey levels, 0-255), the SSIM between the two images of each seed, and the CLIP scores of both
(open_clip --clip-arch, weights from --clip-pretrained; random weights without it, so only the
difference and SSIM are meaningful then). The last line printed is the ratio (b)/(a).

`--family F` (sdxl, sd3, sd35_medium, sd35_large, flux_schnell, flux_dev, pixart_sigma, sana, or
all) measures a family's pipeline instead: its published architecture (benchmarks/arch/F.json)
with random weights in bf16, batched calls at the model card's steps, guidance and size (unless
given), denoiser compiled unless --no-compile, one untimed batch first. It prints the FLOPs per
image (benchmarks/arch/exact.py), the compute bound in images/s at the device's bf16 matrix-product
rate (measured on an 8192² product, or --peak-tflops), the measured images/s, and last the ratio
measured / bound. With --tiny every family's tiny pipeline runs on the CPU at 64² (fp32 rate).

    python benchmarks/synth_gpu.py                 # GPU: 1024², 30 steps, guidance 7.5
    python benchmarks/synth_gpu.py --ablate
    python benchmarks/synth_gpu.py --tiny          # CPU, seconds: the tiny pipeline
    python benchmarks/synth_gpu.py --variant quantize=fp8 --compare quantize=fp8   # GPU (capability >= 8.9)
    python benchmarks/synth_gpu.py --tiny --variant steps=1,guidance=0,scheduler=EulerDiscreteScheduler --compare steps=1
    python benchmarks/synth_gpu.py --family flux_schnell
    python benchmarks/synth_gpu.py --family all --tiny   # CPU, every family's tiny pipeline
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import Timer, captions, clip_scorer, header, say, sync

import torch

from benchmarks.arch import exact
from benchmarks.arch.sdxl_arch import build_sdxl_pipeline, sdxl_arch, unet_forward_flops, vae_decode_flops
from factory import schema as S
from factory.devices import torch_dtype
from factory.errors import SettingError
from factory.score.ssim import ssim_gray, to_gray
from factory.synth.diffusion import SDXL
from factory.synth.families import CFG, FAMILIES, call_arguments
from factory.synth.tiny import build_tiny_sdxl
from factory.synth.tiny_families import build_tiny

PEAK_BF16_TFLOPS = 790.0  # dense bf16 matrix products measured on the H100/H200 here (KINDS.md)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random pipeline on CPU (CI smoke run)")
    p.add_argument("--family", choices=[*FAMILIES, "all"], help="measure this family's pipeline (see above)")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 matrix-product rate (default: measured)")
    p.add_argument("--size", type=int, help="default 1024 (--family: the model card's)")
    p.add_argument("--steps", type=int, help="default 30 (--family: the model card's)")
    p.add_argument("--guidance", type=float, help="default 7.5 (--family: the model card's)")
    p.add_argument("--batch-size", type=int, help="default 8 (--family: 4)")
    p.add_argument("--ref-images", type=int, default=3, help="timed reference images (after the warm-up ones)")
    p.add_argument("--ref-warmup", type=int, default=2,
                   help="untimed reference images first (one alone left the clocks and allocator cold: 0.30 vs 0.46 images/s)")
    p.add_argument("--timed-batches", type=int, default=2)
    p.add_argument("--ablate-batches", type=int, default=1, help="timed batches per ablation step")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for (b)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--ablate", action="store_true", help="time each lever in turn")
    p.add_argument("--variant", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="stage options to change from (b), timed after it; repeatable")
    p.add_argument("--compare", action="append", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="pixel difference, SSIM and CLIP scores of (b) with these options against (b), same seeds; repeatable")
    p.add_argument("--compare-images", type=int, default=16, help="images per --compare (--tiny: 4)")
    p.add_argument("--clip-arch", default="ViT-L-14-336", help="open_clip architecture for --compare (--tiny: the tiny CLIP)")
    p.add_argument("--clip-pretrained", default=None, help="open_clip weights file for --compare (default: random weights)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.family:
        if a.tiny:
            a.device, a.size, a.steps, a.batch_size, a.timed_batches = "cpu", 64, 2, 2, 1
        a.batch_size = a.batch_size or 4
        return a
    a.size, a.steps = a.size or 1024, a.steps or 30
    a.guidance = 7.5 if a.guidance is None else a.guidance
    a.batch_size = a.batch_size or 8
    if a.tiny:
        a.device, a.size, a.steps, a.batch_size = "cpu", 64, 2, 4
        a.ref_images, a.ref_warmup, a.timed_batches, a.no_compile = 2, 1, 1, True
        a.variant = a.variant or ["attention_backend=math"]
        a.compare_images, a.clip_arch = min(a.compare_images, 4), "tiny"
    # quantize=fp8 turns the UNet's weights to fp8 in place: those variants run after every other.
    a.variant = sorted((parse_options(v) for v in a.variant or []), key=lambda o: bool(o.get("quantize")))
    a.compare = [parse_options(v) for v in a.compare or []]
    if sum(bool(o.get("quantize")) for o in a.variant + a.compare) > 1:
        raise SystemExit("quantize=fp8 can be timed or compared once per run (it quantizes the UNet in place)")
    if a.ablate and any(o.get("quantize") for o in a.variant + a.compare):
        raise SystemExit("--ablate runs after the variants and comparisons: not with quantize=fp8 (it quantizes the UNet in place)")
    return a


def parse_value(value: str):
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_options(text: str) -> dict:
    """'a=1,b=true,c=x,d.e=y,g=0.5' → {'a': 1, 'b': True, 'c': 'x', 'd': {'e': 'y'}, 'g': 0.5}."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected KEY=VALUE pairs separated by commas")
        key, _, sub = key.strip().partition(".")
        if sub:
            out.setdefault(key, {})[sub] = parse_value(value)
        else:
            out[key] = parse_value(value)
    return out


def reference_rate(pipe, prompts, args) -> float:
    """SynthVLM's loop: pipe(prompt).images[0], a PIL image, one prompt at a time."""
    def one(p, seed):
        g = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt=p, num_inference_steps=args.steps, guidance_scale=args.guidance,
                    height=args.size, width=args.size, generator=g).images[0]

    for i in range(args.ref_warmup):  # warm-up: cuDNN/cuBLAS choices, allocator, clocks
        one(prompts[i % len(prompts)], 1000 + i)
    with Timer(args.device) as t:
        for i, p in enumerate(prompts[: args.ref_images]):
            image = one(p, i + 1)
    assert image.size == (args.size, args.size), image.size
    return args.ref_images / t.s


def stage_batch(prompts: list[str], start: int, generator: str) -> dict:
    """Sample rows for the generator named `generator` (rows of another name would pass through it)."""
    n = len(prompts)
    return {
        S.ID: np.array([str(start + i) for i in range(n)], dtype=object),
        S.CAPTION: np.array(prompts, dtype=object),
        S.SAMPLE: np.zeros(n, np.int32),
        S.GENERATOR: np.array([generator] * n, dtype=object),
        S.SEED: np.arange(start, start + n, dtype=np.int64),
    }


def stage_rate(synth: SDXL, bs: int, args, label: str, batches: int | None = None) -> float:
    """Images/s through the stage's __call__ (uint8 on the host), after one untimed batch."""
    batches = batches or args.timed_batches
    prompts = captions(bs * (batches + 1))
    with Timer(args.device) as t:
        out = synth(stage_batch(prompts[:bs], 0, synth.name))
    say(f"  {label}: first batch (untimed) {t.s:.1f} s")
    assert out[S.IMAGE].dtype == np.uint8 and out[S.IMAGE].shape == (bs, args.size, args.size, 3), out[S.IMAGE].shape
    with Timer(args.device) as t:
        for b in range(1, batches + 1):
            out = synth(stage_batch(prompts[b * bs : (b + 1) * bs], b * bs, synth.name))
    n = bs * batches
    if synth.oom_retries:
        say(f"  {label}: {synth.oom_retries} out-of-memory retries (batch halved)")
    return n / t.s


def undo_speedups(pipe, scheduler=None) -> None:
    """Back to the plain eager pipeline: uncompiled, unfused, contiguous, its own scheduler (for the ablation)."""
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    pipe.vae.__dict__.pop("decode", None)  # the compiled decode was set on the instance
    if hasattr(pipe, "unfuse_qkv_projections"):
        pipe.unfuse_qkv_projections()
    pipe.unet.to(memory_format=torch.contiguous_format)
    pipe.vae.to(memory_format=torch.contiguous_format)


def stage_images(synth: SDXL, prompts: list[str]) -> np.ndarray:
    """uint8 images of `prompts` (seeds 0..n-1) through the stage, a batch at a time."""
    bs = synth.batch_size
    return np.concatenate([synth(stage_batch(prompts[i : i + bs], i))[S.IMAGE] for i in range(0, len(prompts), bs)])


def compare_images(ref: np.ndarray, new: np.ndarray, prompts: list[str], scorer) -> dict:
    """Mean absolute difference (grey levels), SSIM between the pairs, CLIP scores of both."""
    mad = float(np.abs(ref.astype(np.int16) - new.astype(np.int16)).mean())
    gray = [to_gray(torch.from_numpy(x).permute(0, 3, 1, 2)) for x in (ref, new)]
    ssim = ssim_gray(*gray).numpy()
    clip_ref, _ = scorer.score(ref, prompts)
    clip_new, _ = scorer.score(new, prompts)
    return {"mad": mad, "mad_max": int(np.abs(ref.astype(np.int16) - new.astype(np.int16)).max()),
            "ssim_mean": float(ssim.mean()), "ssim_min": float(ssim.min()),
            "clip_ref": float(clip_ref.mean()), "clip_new": float(clip_new.mean()),
            "clip_delta": float((clip_new - clip_ref).mean()), "clip_delta_abs": float(np.abs(clip_new - clip_ref).mean())}


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Dense matrix-product rate of the device in TFLOP/s (after a warm-up product)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    with Timer(device) as t:
        for _ in range(reps):
            a @ b
    return 2 * n**3 * reps / t.s / 1e12


def family_rate(pipe, fam, args, steps: int, size: int) -> float:
    """Images/s of batched pipeline calls (uint8-ready float output), after one untimed batch."""
    bs = args.batch_size
    prompts = captions(bs * (args.timed_batches + 1))
    kwargs = dict(call_arguments(fam, steps, args.guidance), height=size, width=size, output_type="pt")

    def batch(b):
        g = [torch.Generator("cpu").manual_seed(b * bs + i) for i in range(bs)]
        with torch.inference_mode():
            return pipe(prompt=prompts[b * bs : (b + 1) * bs], generator=g, **kwargs).images

    with Timer(args.device) as t:
        images = batch(0)
    say(f"  first batch (untimed{'' if args.no_compile or args.tiny else ', compiles the denoiser'}) {t.s:.1f} s")
    assert tuple(images.shape) == (bs, 3, size, size), images.shape
    bad = int((~torch.isfinite(images.flatten(1)).all(dim=1)).sum())
    if bad:  # random weights in bf16 may overflow; the timing stands, the images would be rejects
        say(f"  {bad} of {bs} images not finite (random weights)")
    with Timer(args.device) as t:
        for b in range(1, args.timed_batches + 1):
            batch(b)
    return bs * args.timed_batches / t.s


def family_pipeline(name: str, args):
    """(pipeline, the same modules on 'meta' for counting FLOPs)."""
    if args.tiny:
        pipe = build_tiny(name).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe, {k: exact.meta_copy(m) for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    with Timer(args.device) as t:
        pipe = exact.build_pipeline(name, args.device, torch.bfloat16)
    spec = exact.arch(name)["modules"]
    counts = ", ".join(f"{k} {exact.parameters(getattr(pipe, k)):,} (config {s['parameters']:,})" for k, s in spec.items())
    say(f"built {type(pipe).__name__} with the published architecture (random weights, bf16) in {t.s:.1f} s: {counts}")
    return pipe, exact.build_modules(name, "meta")


def run_family(name: str, args, peak: float) -> float:
    """Measure one family: FLOPs/image, compute bound, images/s; returns measured / bound."""
    fam = FAMILIES[name]
    size, steps = args.size or fam.size, args.steps or fam.steps
    say(f"== {name}: {fam.hub_id}, {size}², {steps} steps, guidance {fam.guidance_scale if args.guidance is None else args.guidance} ({fam.guidance})")
    pipe, meta = family_pipeline(name, args)
    passes = fam.cfg_passes if args.guidance is None else (2 if fam.guidance == CFG and args.guidance > 1 else 1)
    f = exact.image_flops(name, meta, size, size, steps, passes)
    say(f"FLOPs/image: {f['total'] / 1e12:.4g} TFLOP ({steps} steps × {passes} × {f['denoiser_forward'] / 1e12:.4g} "
        f"denoiser, VAE decode {f['vae_decode'] / 1e12:.3g}, text encoders {f['text_encoders'] / 1e12:.3g})")
    bound = peak * 1e12 / f["total"]
    say(f"compute bound at {peak:.4g} TFLOP/s: {bound:.4g} images/s")
    eager = getattr(pipe, fam.denoiser)
    if not (args.tiny or args.no_compile):
        setattr(pipe, fam.denoiser, torch.compile(eager, mode=args.compile_mode))
    try:
        rate = family_rate(pipe, fam, args, steps, size)
    except Exception as exc:  # noqa: BLE001 - a compile failure is reported, then timed eager
        if getattr(pipe, fam.denoiser) is eager:
            raise
        say(f"  compiled run failed ({type(exc).__name__}: {str(exc)[:200]}); timing eager")
        setattr(pipe, fam.denoiser, eager)
        rate = family_rate(pipe, fam, args, steps, size)
    say(f"measured: {rate:.4g} images/s (batch {args.batch_size}, {args.timed_batches} timed batches)")
    ratio = rate / bound
    say(f"{name} ratio measured / bound: {ratio:.3f}")
    del pipe
    if args.device.startswith("cuda"):
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return ratio


def family_main(args) -> float:
    dtype = torch.float32 if args.tiny else torch.bfloat16
    peak = args.peak_tflops or matmul_tflops(args.device, dtype, n=1024 if args.tiny else 8192)
    say(f"{str(dtype).split('.')[-1]} matrix-product rate: {peak:.4g} TFLOP/s ({'given' if args.peak_tflops else 'measured'})")
    names = list(FAMILIES) if args.family == "all" else [args.family]
    ratios = {name: run_family(name, args, peak) for name in names}
    if len(ratios) > 1:
        say("ratios measured / bound: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    say("ratio measured / bound" + (" (lowest)" if len(ratios) > 1 else "") + ":")
    say(f"{min(ratios.values()):.4g}")
    return min(ratios.values())


def main(argv=None) -> float:
    args = parse(argv)
    header("synth_gpu", args.device)
    if args.family:
        return family_main(args)
    ref_dtype = torch.float32 if args.tiny else torch.float16
    best_dtype = "float32" if args.tiny else "bfloat16"
    if args.tiny:
        pipe = build_tiny_sdxl(sample_size=args.size // 8).to(args.device)
        pipe.set_progress_bar_config(disable=True)
    else:
        with Timer(args.device) as t:
            pipe = build_sdxl_pipeline(args.device, ref_dtype)
        say(f"built SDXL base architecture (random weights) in {t.s:.1f} s; UNet parameters "
            f"{sum(p.numel() for p in pipe.unet.parameters()):,} (config {sdxl_arch()['modules']['unet']['parameters']:,})")
    say(f"attention processor: {type(next(iter(pipe.unet.attn_processors.values()))).__name__}")
    cfg_factor = 2 if args.guidance > 1 else 1
    unet_f = unet_forward_flops(pipe.unet, 1, args.size, args.size)
    vae_f = vae_decode_flops(pipe.vae, args.size, args.size)
    image_f = cfg_factor * args.steps * unet_f + vae_f
    say(f"counted FLOPs: UNet forward {unet_f / 1e12:.4g} TFLOP/sample, VAE decode {vae_f / 1e12:.4g} TFLOP, "
        f"image {image_f / 1e12:.4g} TFLOP at {args.size}², {args.steps} steps, CFG x{cfg_factor}")
    if not args.tiny:
        say(f"compute bound at {PEAK_BF16_TFLOPS:.0f} TFLOP/s: {PEAK_BF16_TFLOPS * 1e12 / image_f:.2f} images/s")

    def tflops(rate):
        return rate * cfg_factor * args.steps * unet_f / 1e12

    prompts = captions(1 + args.ref_images)
    ref = reference_rate(pipe, prompts, args)
    say(f"(a) reference, 1 prompt/call, {str(ref_dtype).split('.')[-1]}, eager, PIL: {ref:.3f} images/s "
        f"(UNet {tflops(ref):.0f} TFLOP/s)")

    pipe.to(torch_dtype(best_dtype))
    sync(args.device)
    common = dict(steps=args.steps, guidance=args.guidance, height=args.size, width=args.size, device=args.device)
    bs = args.batch_size
    compile_opts = dict(compile=not args.no_compile, compile_mode=args.compile_mode, batch_size=bs)
    # The headline figure first (a time limit may cut the run short), then the variants and the ablation.
    best_opts = dict(channels_last=True, fuse_qkv=True, **compile_opts)
    synth = SDXL.from_pipeline(pipe, **best_opts, **common)
    if synth.warmup_s is not None:
        say(f"torch.compile ({args.compile_mode}) warm-up in the constructor: {synth.warmup_s:.1f} s (not timed)")
    best = stage_rate(synth, bs, args, "best")
    label = f"{best_dtype}, batch {bs}, SDPA, channels_last, fused QKV" + ("" if args.no_compile else f", compile({args.compile_mode})")
    say(f"(b) factory generator stage [{label}], uint8 out: {best:.3f} images/s "
        f"(UNet {tflops(best):.0f} TFLOP/s" + ("" if args.tiny else f", {100 * tflops(best) / PEAK_BF16_TFLOPS:.0f}% of {PEAK_BF16_TFLOPS:.0f}") + ")")
    say(f"ratio (b)/(a) = {best / ref:.3f}")
    scheduler = pipe.scheduler
    for change in args.variant:
        del synth
        undo_speedups(pipe, scheduler)
        torch._dynamo.reset()  # each variant compiles afresh (and never hits the recompilation limit)
        opts = {**best_opts, **common, **change}
        synth = SDXL.from_pipeline(pipe, **opts)
        rate = stage_rate(synth, opts["batch_size"], args, f"variant {change}")
        warm = f"; warm-up {synth.warmup_s:.1f} s" if synth.warmup_s is not None else ""
        unet_tflops = rate * (2 if opts["guidance"] > 1 else 1) * opts["steps"] * unet_f / 1e12  # a variant may change both
        say(f"(b) with {change}: {rate:.3f} images/s (UNet {unet_tflops:.0f} TFLOP/s, {rate / best:.3f}× (b){warm})")
    if args.compare:
        del synth
        undo_speedups(pipe, scheduler)
        torch._dynamo.reset()
        prompts = captions(args.compare_images)
        scorer = clip_scorer(args.clip_arch, **({} if args.tiny else {"pretrained": args.clip_pretrained}), device=args.device)
        weights = "tiny, random" if args.tiny else (args.clip_pretrained or "random weights: CLIP figures not meaningful")
        synth = SDXL.from_pipeline(pipe, **best_opts, **common)
        ref_images = stage_images(synth, prompts)
        for change in sorted(args.compare, key=lambda o: bool(o.get("quantize"))):
            del synth
            undo_speedups(pipe, scheduler)
            torch._dynamo.reset()
            synth = SDXL.from_pipeline(pipe, **{**best_opts, **common, **change})
            d = compare_images(ref_images, stage_images(synth, prompts), prompts, scorer)
            say(f"compare {change} vs (b), {len(prompts)} images, same seeds: mean |difference| {d['mad']:.3f} grey levels "
                f"(max {d['mad_max']}); SSIM mean {d['ssim_mean']:.4f} (min {d['ssim_min']:.4f}); CLIP score ({args.clip_arch}, "
                f"{weights}) {d['clip_ref']:.4f} → {d['clip_new']:.4f}, delta {d['clip_delta']:+.4f} (mean |delta| {d['clip_delta_abs']:.4f})")
    if args.ablate:
        del synth
        undo_speedups(pipe, scheduler)
        torch._dynamo.reset()
        rates = {}
        synth = SDXL.from_pipeline(pipe, **common)
        rates["bf16 eager batch 1"] = stage_rate(synth, 1, args, "bf16 b1", 2 * args.ablate_batches)
        say(f"    bf16, eager, stage, batch 1: {rates['bf16 eager batch 1']:.3f} images/s")
        rates[f"+ batch {bs}"] = stage_rate(synth, bs, args, f"b{bs}", args.ablate_batches)
        say(f"    + batch {bs}: {rates[f'+ batch {bs}']:.3f} images/s")
        synth = SDXL.from_pipeline(pipe, channels_last=True, **common)
        rates["+ channels_last"] = stage_rate(synth, bs, args, "channels_last", args.ablate_batches)
        say(f"    + channels_last: {rates['+ channels_last']:.3f} images/s")
        synth = SDXL.from_pipeline(pipe, fuse_qkv=True, **common)
        rates["+ fused QKV"] = stage_rate(synth, bs, args, "fuse_qkv", args.ablate_batches)
        say(f"    + fused QKV: {rates['+ fused QKV']:.3f} images/s")
        say("ablation (images/s): " + f"reference {ref:.3f}; " + "; ".join(f"{k} {v:.3f}" for k, v in rates.items())
            + (f"; + compile {best:.3f}" if not args.no_compile else ""))
    ratio = best / ref
    say("ratio (b)/(a):")
    say(f"{ratio:.3f}")
    return ratio


if __name__ == "__main__":
    try:
        main()
    except SettingError as exc:  # e.g. quantize=fp8 on a CPU or a GPU older than compute capability 8.9
        raise SystemExit(f"synth_gpu: {exc}") from None
