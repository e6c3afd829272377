"""Pairs/s of the scoring stage (CLIPScore + round-trip SSIM) on the device, random weights.

Through ClipSsimScorer's own code path: uint8 images on the host → device, open_clip in fp16
(ViT-L-14-336, the paper's scorer, and ViT-B-32, SynthVLM's code default), SSIM in torch on the
device. Sweeps batch sizes; also times CLIP alone and SSIM alone on device-resident images.
The last line printed is the best ViT-L-14-336 pairs/s through the stage.

    python benchmarks/score_gpu.py                 # GPU, 1024² images
    python benchmarks/score_gpu.py --tiny          # CPU, seconds
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import Timer, captions, header, say

import torch

from factory.score.scorer import ClipSsimScorer
from factory.score.ssim import round_trip_ssim


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--size", type=int, default=1024, help="generated image side")
    p.add_argument("--batch-sizes", default="32,64,128,256")
    p.add_argument("--archs", default="ViT-L-14-336,ViT-B-32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.tiny:
        a.device, a.size, a.batch_sizes, a.archs, a.repeats = "cpu", 64, "4,8", "tiny", 1
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.archs = a.archs.split(",")
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
        scorer = ClipSsimScorer(arch=arch, pretrained=None, device=args.device, dtype=dtype)
        say(f"{arch}: {sum(p.numel() for p in scorer.clip.model.parameters()):,} parameters, {dtype}, input {scorer.clip.size}²")
        best = (0.0, 0)
        for bs in args.batch_sizes:
            try:
                r = rate(lambda: scorer.score(images[:bs], caps[:bs]), bs, args.repeats, args.device)
            except torch.OutOfMemoryError:
                say(f"  batch {bs}: out of memory")
                torch.cuda.empty_cache()
                break
            say(f"  {arch} stage (host uint8 → CLIP + SSIM → host), batch {bs}: {r:.0f} pairs/s")
            best = max(best, (r, bs))
        bs = best[1]
        x = torch.from_numpy(images[:bs]).to(args.device)
        clip_only = rate(lambda: scorer.clip(x, caps[:bs]), bs, args.repeats, args.device)
        say(f"  {arch} CLIP alone on device-resident images, batch {bs}: {clip_only:.0f} pairs/s")
        if arch == args.archs[0]:
            ssim_only = rate(lambda: round_trip_ssim(x), bs, args.repeats, args.device)
            say(f"  SSIM round trip alone ({args.size}² → 768 → 336 → 768), batch {bs}: {ssim_only:.0f} pairs/s")
        results[arch] = best
        say(f"{arch}: best {best[0]:.0f} pairs/s at batch {best[1]}")
        del scorer, x
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    first = args.archs[0]
    say(f"best pairs/s through ClipSsimScorer with {first}:")
    say(f"{results[first][0]:.1f}")
    return results[first][0]


if __name__ == "__main__":
    main()
