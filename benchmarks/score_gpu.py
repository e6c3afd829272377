"""Pairs/s of the scoring stage (CLIPScore + round-trip SSIM) on the device, random weights.

Through ClipSsimScorer's own code path: uint8 images on the host → device (pinned buffers, in
chunks), open_clip in fp16 (ViT-L-14-336, the paper's scorer, and ViT-B-32, SynthVLM's code
default), SSIM in torch on the device; eager, then with torch.compile of CLIP's image path and the
SSIM round trip (`--compile-modes`). Sweeps batch sizes; also times CLIP alone and SSIM alone on
device-resident images. The last line printed is the best ViT-L-14-336 pairs/s through the stage.

    python benchmarks/score_gpu.py                 # GPU, 1024² images
    python benchmarks/score_gpu.py --tiny          # CPU, seconds
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import Timer, captions, clip_scorer, header, say

import torch



def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--size", type=int, default=1024, help="generated image side")
    p.add_argument("--batch-sizes", default="64,128", help="images per stage call")
    p.add_argument("--chunk-size", type=int, default=32, help="images per device step (the compiled shape)")
    p.add_argument("--compile-modes", default=None,
                   help="'none' = eager; others are torch.compile modes, e.g. max-autotune-no-cudagraphs "
                        "(default: none,default; with --tiny: none)")
    p.add_argument("--archs", default="ViT-L-14-336,ViT-B-32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.tiny:
        a.device, a.size, a.batch_sizes, a.archs, a.repeats, a.chunk_size = "cpu", 64, "4,8", "tiny", 1, 4
    a.compile_modes = a.compile_modes or ("none" if a.tiny else "none,default")
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.archs = a.archs.split(",")
    a.compile_modes = a.compile_modes.split(",")
    return a


def rate(fn, n: int, repeats: int, device: str) -> float:
    fn()  # warm-up
    with Timer(device) as t:
        for _ in range(repeats):
            fn()
    return n * repeats / t.s


def main(argv=None) -> float:
    args = parse(argv)
    header("score_gpu", args.device)
    rng = np.random.default_rng(0)
    big = max(args.batch_sizes)
    images = rng.integers(0, 256, (big, args.size, args.size, 3), dtype=np.uint8)
    caps = captions(big)
    dtype = "float32" if args.tiny else "float16"
    results = {}
    for arch in args.archs:
        best = (0.0, 0, "")
        for mode in args.compile_modes:
            compiled = mode != "none"
            label = f"compile({mode})" if compiled else "eager"
            with Timer(args.device) as t:
                scorer = clip_scorer(arch, pretrained=None, device=args.device, dtype=dtype,
                                     chunk_size=args.chunk_size, compile=compiled, compile_mode=mode if compiled else "default")
                scorer.score(images[: args.chunk_size], caps[: args.chunk_size])  # compiles here, once
            say(f"{arch} {label}: {sum(p.numel() for p in scorer.clip.model.parameters()):,} parameters, {dtype}, "
                f"input {scorer.clip.size}², chunks of {args.chunk_size}; set-up + first call {t.s:.1f} s")
            for bs in args.batch_sizes:
                try:
                    r = rate(lambda: scorer.score(images[:bs], caps[:bs]), bs, args.repeats, args.device)
                except torch.OutOfMemoryError:
                    say(f"  batch {bs}: out of memory")
                    torch.cuda.empty_cache()
                    break
                say(f"  {arch} {label} stage (host uint8 → CLIP + SSIM → host), batch {bs}: {r:.0f} pairs/s")
                best = max(best, (r, bs, label))
            x = torch.from_numpy(images[: args.chunk_size]).to(args.device)
            c = args.chunk_size
            clip_only = rate(lambda: scorer.clip.image_features(x), c, args.repeats, args.device)
            say(f"  {arch} {label} CLIP image tower alone on device-resident images, chunk {c}: {clip_only:.0f} pairs/s")
            if arch == args.archs[0]:
                ssim_only = rate(lambda: scorer._ssim(x, scorer.ssim_size, scorer.ssim_low), c, args.repeats, args.device)
                say(f"  {label} SSIM round trip alone ({args.size}² → 768 → 336 → 768), chunk {c}: {ssim_only:.0f} pairs/s")
            del scorer, x
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        results[arch] = best
        say(f"{arch}: best {best[0]:.0f} pairs/s at batch {best[1]}, {best[2]}")
    first = args.archs[0]
    say(f"best pairs/s through ClipSsimScorer with {first}:")
    say(f"{results[first][0]:.1f}")
    return results[first][0]


if __name__ == "__main__":
    main()
