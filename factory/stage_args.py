"""Each stage's constructor arguments, cut from the resolved config: the one place that maps keys to stages."""
from __future__ import annotations


def synth_kwargs(cfg: dict) -> dict:
    """DiffusionSynth's arguments: the model group, the synth block and the actor's thread count."""
    m, s = cfg["model"], cfg["synth"]
    return dict(
        path=m["path"],
        refiner_path=m.get("refiner_path"),
        high_noise_frac=m.get("high_noise_frac", 0.8),
        device=m["device"],
        dtype=m["dtype"],
        variant=m.get("variant"),
        height=m.get("height"),
        width=m.get("width"),
        steps=s["steps"],
        guidance=s["guidance"],
        negative_prompt=s.get("negative_prompt", ""),
        channels_last=m.get("channels_last", False),
        fuse_qkv=m.get("fuse_qkv", False),
        compile=m.get("compile", False),
        compile_mode=m.get("compile_mode", "default"),
        vae_tiling=m.get("vae_tiling", False),
        attention_backend=m.get("attention_backend", "auto"),
        inductor_tuning=m.get("inductor_tuning", False),
        batch_size=s["batch_size"],  # the compiled batch shape: warmed up once, short batches padded
        torch_threads=cfg["resources"]["synth"].get("torch_threads"),
    )


def score_kwargs(cfg: dict) -> dict:
    """ClipSsimScorer's arguments: the scorer group, the score block and the actor's thread count."""
    sc, s = cfg["scorer"], cfg["score"]
    return dict(
        arch=sc["arch"],
        pretrained=sc.get("pretrained"),
        device=sc["device"],
        dtype=sc["dtype"],
        lam=s["lam"],
        prefix=s["prefix"],
        ssim_size=s["ssim_size"],
        ssim_low=s["ssim_low"],
        chunk_size=sc.get("chunk_size"),
        compile=sc.get("compile", False),
        compile_mode=sc.get("compile_mode", "default"),
        torch_threads=cfg["resources"]["score"].get("torch_threads"),
    )
