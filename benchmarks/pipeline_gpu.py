"""End-to-end images/s of the factory's stages on one GPU: synthesis → scoring → candidate files.

The stages are the factory's own classes called directly (no Ray), overlapped the way the actor
pools overlap them: the main thread only synthesises; a scoring thread scores each finished batch
on its own CUDA stream and hands it to a CPU thread that encodes PNGs and writes Parquet.
Prints the synthesis-only rate, the end-to-end rate on N captions, the share of wall time the
GPU spends on synthesis (CUDA events around each synthesis call; plus NVML utilisation when
available), and last the ratio end-to-end / synthesis-only.

    python benchmarks/pipeline_gpu.py              # GPU: SDXL architecture, 1024², 30 steps, 64 captions
    python benchmarks/pipeline_gpu.py --tiny       # CPU, seconds
"""
from __future__ import annotations

import argparse
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import Timer, captions, clip_scorer, header, say, sync
from synth_gpu import stage_batch

import torch

from factory import schema as S
from factory.io.write import CandidateWriter
from factory.synth.diffusion import SDXL


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--captions", type=int, default=64)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--synth-only-batches", type=int, default=2)
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--scorer-arch", default="ViT-L-14-336")
    p.add_argument("--scorer-chunk", type=int, default=None, help="scorer.chunk_size (default: the whole batch)")
    p.add_argument("--scorer-compile-mode", default=None, help="scorer.compile with this mode (needs --scorer-chunk)")
    p.add_argument("--encode-threads", type=int, default=8)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.tiny:
        a.device, a.size, a.steps, a.batch_size, a.captions = "cpu", 64, 2, 4, 8
        a.synth_only_batches, a.no_compile, a.scorer_arch, a.encode_threads = 1, True, "tiny", 2
    return a


class UtilSampler:
    """Mean NVML GPU utilisation (share of time a kernel ran) while it runs; None without NVML."""

    def __init__(self, device: str, every_s: float = 0.2):
        self.samples, self.every_s, self.stop = [], every_s, threading.Event()
        self.ok = device.startswith("cuda")
        if self.ok:
            try:
                torch.cuda.utilization()
            except Exception:
                self.ok = False

    def _run(self):
        while not self.stop.wait(self.every_s):
            self.samples.append(torch.cuda.utilization())

    def __enter__(self):
        if self.ok:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.ok:
            self.thread.join()

    @property
    def mean(self):
        return float(np.mean(self.samples)) if self.samples else None


def main(argv=None) -> float:
    args = parse(argv)
    header("pipeline_gpu", args.device)
    cuda = args.device.startswith("cuda")
    bs = args.batch_size
    if args.tiny:
        from factory.synth.tiny import build_tiny_sdxl

        pipe = build_tiny_sdxl(sample_size=args.size // 8).to(args.device)
    else:
        from benchmarks.arch.sdxl_arch import build_sdxl_pipeline

        pipe = build_sdxl_pipeline(args.device, torch.bfloat16)
    with Timer(args.device) as t:
        synth = SDXL.from_pipeline(
            pipe, device=args.device, steps=args.steps, guidance=args.guidance, height=args.size, width=args.size,
            batch_size=bs, channels_last=True, fuse_qkv=True, compile=not args.no_compile, compile_mode=args.compile_mode,
        )
    say(f"synthesis stage ready in {t.s:.1f} s (compile warm-up {synth.warmup_s or 0:.1f} s)")
    scorer = clip_scorer(args.scorer_arch, pretrained=None, device=args.device, chunk_size=args.scorer_chunk,
                         compile=bool(args.scorer_compile_mode), compile_mode=args.scorer_compile_mode or "default",
                         dtype="float32" if args.tiny else "float16")
    texts = captions(args.captions + bs * (args.synth_only_batches + 1))
    extra = texts[args.captions :]

    # Synthesis alone, after one untimed batch.
    synth(stage_batch(extra[:bs], 10_000, synth.name))
    with Timer(args.device) as t:
        for b in range(1, args.synth_only_batches + 1):
            synth(stage_batch(extra[b * bs : (b + 1) * bs], 10_000 + b * bs, synth.name))
    synth_only = bs * args.synth_only_batches / t.s
    say(f"synthesis alone (batch {bs}): {synth_only:.3f} images/s")
    scorer(synth(stage_batch(extra[:bs], 20_000, synth.name)))  # scorer warm-up at this batch shape

    out_dir = tempfile.mkdtemp(prefix="pipeline_gpu_")
    writer = CandidateWriter(out_dir, "png", threads=args.encode_threads)
    to_score: queue.Queue = queue.Queue(maxsize=2)
    written, unusable, score_s, errors = [], [0], [0.0], []
    score_stream = torch.cuda.Stream() if cuda else None
    write_pool = ThreadPoolExecutor(1)

    def scoring_loop():
        try:
            while (batch := to_score.get()) is not None:
                t0 = time.perf_counter()
                unusable[0] += sum(1 for r in batch[S.REASON] if str(r))
                # Random weights can decode to NaN: score every sample anyway, so the cost is real.
                batch = dict(batch, **{S.REASON: np.array([""] * len(batch[S.REASON]), dtype=object)})
                if score_stream is not None:
                    with torch.cuda.stream(score_stream):
                        scored = scorer(batch)
                else:
                    scored = scorer(batch)
                score_s[0] += time.perf_counter() - t0
                written.append(write_pool.submit(writer, scored))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    spans = []
    t_start = time.perf_counter()
    scorer_thread = threading.Thread(target=scoring_loop, daemon=True)
    scorer_thread.start()
    with UtilSampler(args.device) as util:
        for b in range(0, args.captions, bs):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            batch = synth(stage_batch(texts[b : b + bs], b, synth.name))
            if cuda:
                end.record()
                spans.append((start, end))
            to_score.put(batch)
            if errors:
                raise errors[0]
        to_score.put(None)
        scorer_thread.join()
        rows = sum(int(f.result()["rows"][0]) for f in written)
        wall = time.perf_counter() - t_start
    write_pool.shutdown()
    if errors:
        raise errors[0]
    assert rows == args.captions, (rows, args.captions)
    e2e = rows / wall
    say(f"end to end, {rows} captions → scored candidate Parquet ({out_dir}): {wall:.1f} s, {e2e:.3f} images/s")
    say(f"  scorer thread busy {score_s[0]:.1f} s; {unusable[0]} images synthesis marked unusable (random weights), scored anyway")
    if cuda:
        sync(args.device)
        synth_gpu_s = sum(s.elapsed_time(e) for s, e in spans) / 1000
        say(f"synthesis keeps the GPU busy {100 * synth_gpu_s / wall:.1f}% of wall time (CUDA events, {synth_gpu_s:.1f} of {wall:.1f} s)")
        if util.mean is not None:
            say(f"NVML GPU utilisation over the run: {util.mean:.0f}% mean")
    say("ratio end-to-end / synthesis alone:")
    say(f"{e2e / synth_only:.3f}")
    return e2e / synth_only


if __name__ == "__main__":
    main()
