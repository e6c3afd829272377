"""Images/s of SDXL base (exact architecture, random weights): SynthVLM's loop vs the factory's stage.

(a) reference: one prompt per call, fp16, eager, PIL output, as SynthVLM's code does it;
(b) the factory's DiffusionSynth at its best settings: batched prompts (both guidance branches in
    one UNet call), bf16, SDPA attention, channels-last, fused QKV, torch.compile of UNet and VAE
    decoder (compilation paid once, in the constructor: reported, not timed), uint8 output.
`--ablate` adds each lever in turn; each `--variant key=value[,key=value]` recompiles (b) with those
stage options changed (e.g. attention_backend=cudnn, channels_last=false, batch_size=16,
inductor_tuning=true,compile_mode=max-autotune-no-cudagraphs) and times it. The last line printed
is the ratio (b)/(a).

    python benchmarks/synth_gpu.py                 # GPU: 1024², 30 steps, guidance 7.5
    python benchmarks/synth_gpu.py --ablate
    python benchmarks/synth_gpu.py --tiny          # CPU, seconds: the tiny pipeline
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import Timer, captions, header, say, sync

import torch

from factory import schema as S
from factory.synth.diffusion import DiffusionSynth, torch_dtype
from benchmarks.arch.sdxl_arch import build_sdxl_pipeline, sdxl_arch, unet_forward_flops, vae_decode_flops

PEAK_BF16_TFLOPS = 790.0  # dense bf16 matrix products measured on the H100/H200 here (KINDS.md)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random pipeline on CPU (CI smoke run)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=8)
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
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.tiny:
        a.device, a.size, a.steps, a.batch_size = "cpu", 64, 2, 4
        a.ref_images, a.ref_warmup, a.timed_batches, a.no_compile = 2, 1, 1, True
        a.variant = a.variant or ["attention_backend=math"]
    a.variant = [parse_options(v) for v in a.variant or []]
    return a


def parse_options(text: str) -> dict:
    """'a=1,b=true,c=x' → {'a': 1, 'b': True, 'c': 'x'}."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: expected KEY=VALUE pairs separated by commas")
        low = value.lower()
        out[key.strip()] = True if low == "true" else False if low == "false" else int(value) if value.isdigit() else value
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


def stage_batch(prompts: list[str], start: int) -> dict:
    n = len(prompts)
    return {
        S.ID: np.array([str(start + i) for i in range(n)], dtype=object),
        S.CAPTION: np.array(prompts, dtype=object),
        S.SAMPLE: np.zeros(n, np.int32),
        S.SEED: np.arange(start, start + n, dtype=np.int64),
    }


def stage_rate(synth: DiffusionSynth, bs: int, args, label: str, batches: int | None = None) -> float:
    """Images/s through the stage's __call__ (uint8 on the host), after one untimed batch."""
    batches = batches or args.timed_batches
    prompts = captions(bs * (batches + 1))
    with Timer(args.device) as t:
        out = synth(stage_batch(prompts[:bs], 0))
    say(f"  {label}: first batch (untimed) {t.s:.1f} s")
    assert out[S.IMAGE].dtype == np.uint8 and out[S.IMAGE].shape == (bs, args.size, args.size, 3), out[S.IMAGE].shape
    with Timer(args.device) as t:
        for b in range(1, batches + 1):
            out = synth(stage_batch(prompts[b * bs : (b + 1) * bs], b * bs))
    n = bs * batches
    if synth.oom_retries:
        say(f"  {label}: {synth.oom_retries} out-of-memory retries (batch halved)")
    return n / t.s


def undo_speedups(pipe) -> None:
    """Back to the plain eager pipeline: uncompiled, unfused, contiguous (for the ablation)."""
    pipe.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    pipe.vae.__dict__.pop("decode", None)  # the compiled decode was set on the instance
    if hasattr(pipe, "unfuse_qkv_projections"):
        pipe.unfuse_qkv_projections()
    pipe.unet.to(memory_format=torch.contiguous_format)
    pipe.vae.to(memory_format=torch.contiguous_format)


def main(argv=None) -> float:
    args = parse(argv)
    header("synth_gpu", args.device)
    ref_dtype = torch.float32 if args.tiny else torch.float16
    best_dtype = "float32" if args.tiny else "bfloat16"
    if args.tiny:
        from factory.synth.tiny import build_tiny_sdxl

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
    synth = DiffusionSynth.from_pipeline(pipe, **best_opts, **common)
    if synth.warmup_s is not None:
        say(f"torch.compile ({args.compile_mode}) warm-up in the constructor: {synth.warmup_s:.1f} s (not timed)")
    best = stage_rate(synth, bs, args, "best")
    label = f"{best_dtype}, batch {bs}, SDPA, channels_last, fused QKV" + ("" if args.no_compile else f", compile({args.compile_mode})")
    say(f"(b) factory DiffusionSynth [{label}], uint8 out: {best:.3f} images/s "
        f"(UNet {tflops(best):.0f} TFLOP/s" + ("" if args.tiny else f", {100 * tflops(best) / PEAK_BF16_TFLOPS:.0f}% of {PEAK_BF16_TFLOPS:.0f}") + ")")
    say(f"ratio (b)/(a) = {best / ref:.3f}")
    for change in args.variant:
        del synth
        undo_speedups(pipe)
        torch._dynamo.reset()  # each variant compiles afresh (and never hits the recompilation limit)
        opts = {**best_opts, **change}
        synth = DiffusionSynth.from_pipeline(pipe, **opts, **common)
        rate = stage_rate(synth, opts["batch_size"], args, f"variant {change}")
        warm = f"; warm-up {synth.warmup_s:.1f} s" if synth.warmup_s is not None else ""
        say(f"(b) with {change}: {rate:.3f} images/s (UNet {tflops(rate):.0f} TFLOP/s, {rate / best:.3f}× (b){warm})")
    if args.ablate:
        del synth
        undo_speedups(pipe)
        torch._dynamo.reset()
        rates = {}
        synth = DiffusionSynth.from_pipeline(pipe, **common)
        rates["bf16 eager batch 1"] = stage_rate(synth, 1, args, "bf16 b1", 2 * args.ablate_batches)
        say(f"    bf16, eager, stage, batch 1: {rates['bf16 eager batch 1']:.3f} images/s")
        rates[f"+ batch {bs}"] = stage_rate(synth, bs, args, f"b{bs}", args.ablate_batches)
        say(f"    + batch {bs}: {rates[f'+ batch {bs}']:.3f} images/s")
        synth = DiffusionSynth.from_pipeline(pipe, channels_last=True, **common)
        rates["+ channels_last"] = stage_rate(synth, bs, args, "channels_last", args.ablate_batches)
        say(f"    + channels_last: {rates['+ channels_last']:.3f} images/s")
        synth = DiffusionSynth.from_pipeline(pipe, fuse_qkv=True, **common)
        rates["+ fused QKV"] = stage_rate(synth, bs, args, "fuse_qkv", args.ablate_batches)
        say(f"    + fused QKV: {rates['+ fused QKV']:.3f} images/s")
        say("ablation (images/s): " + f"reference {ref:.3f}; " + "; ".join(f"{k} {v:.3f}" for k, v in rates.items())
            + (f"; + compile {best:.3f}" if not args.no_compile else ""))
    ratio = best / ref
    say("ratio (b)/(a):")
    say(f"{ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
