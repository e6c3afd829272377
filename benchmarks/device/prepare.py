"""The inputs of the device check, built offline: a diffusers model folder, an open_clip checkpoint
file and a captions file, loaded back by the factory's own CLI (`model.path=`, `scorer.pretrained=`).

    python benchmarks/device/prepare.py WORK          # GPU: SDXL base architecture + ViT-L-14-336, random weights
    python benchmarks/device/prepare.py WORK --cpu    # the tiny models of `model=tiny scorer=tiny`

Writes WORK/model/ (save_pretrained), WORK/clip/open_clip_model.safetensors and WORK/captions.jsonl,
each only when it is not there yet (a rerun on a warm machine skips them), and prints what each took.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import write_captions  # noqa: E402

CLIP_FILE = "open_clip_model.safetensors"


def sdxl_builder():
    """The function that builds SDXL base 1.0's exact architecture with random weights:
    `build(device, dtype)` → a StableDiffusionXLPipeline. The one place to repoint if it moves."""
    from benchmarks.arch.sdxl_arch import build_sdxl_pipeline

    return build_sdxl_pipeline


def save_model(folder: Path, cpu: bool) -> None:
    """A diffusers folder that `DiffusionPipeline.from_pretrained(folder)` loads (model.variant=null)."""
    if cpu:
        from factory.synth.tiny import build_tiny_sdxl

        pipe = build_tiny_sdxl()
    else:  # built on the GPU (seconds), stored in bf16: the dtype model=sdxl loads it in, half the bytes
        pipe = sdxl_builder()("cuda", torch.bfloat16)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def save_clip(path: Path, cpu: bool) -> None:
    """A random-weight open_clip checkpoint that `open_clip.create_model(arch, pretrained=path)` loads."""
    import open_clip
    from safetensors.torch import save_file

    if cpu:
        from factory.score.tiny import register_tiny_clip

        arch, device, dtype = register_tiny_clip(), "cpu", torch.float32
    else:  # stored in fp16, the dtype scorer=clip_l14_336 runs in; the loader copies it into the model
        arch, device, dtype = "ViT-L-14-336", "cuda", torch.float16
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}, str(path))


def once(target: Path, build, what: str) -> None:
    """Build `target` through a temporary name, so an interrupted build is never taken as done."""
    if target.exists():
        print(f"{what}: {target} (already there)", flush=True)
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a build cut short earlier
    t0 = time.perf_counter()
    build(tmp)
    tmp.rename(target)
    print(f"{what}: {target} in {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("--cpu", action="store_true", help="the tiny models, on the CPU")
    p.add_argument("--captions", type=int, default=128)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    kind = "tiny" if a.cpu else "SDXL base architecture"
    once(a.work / "model", lambda f: save_model(f, a.cpu), f"{kind} pipeline (random weights)")
    clip_dir = a.work / "clip"
    once(clip_dir, lambda d: save_clip(d / CLIP_FILE, a.cpu), "open_clip checkpoint (random weights)")
    captions = a.work / f"captions-{a.captions}.jsonl"  # named by the count: another count is another file
    write_captions(captions, a.captions)
    print(f"captions: {captions} ({a.captions}, all passing the curation rules)", flush=True)


if __name__ == "__main__":
    main()
