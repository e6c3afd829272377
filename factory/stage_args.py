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


def perplexity_kwargs(cfg: dict) -> dict:
    """PerplexityFilter's arguments: curate.rules.perplexity and the actor's thread count."""
    ppl = cfg["curate"]["rules"].get("perplexity") or {}
    return dict(
        model=ppl.get("model"),
        max_perplexity=ppl.get("max"),
        batch_size=ppl.get("batch_size", 32),
        max_length=ppl.get("max_length", 128),
        device=ppl.get("device", "cpu"),
        dtype=ppl.get("dtype", "float32"),
        torch_threads=(cfg["resources"].get("perplexity") or {}).get("torch_threads"),
    )


def judge_kwargs(cfg: dict) -> dict:
    """HFJudge's arguments: curate.llm (with its prompt) and the actor's thread count."""
    llm = cfg["curate"].get("llm") or {}
    prompt = llm.get("prompt") or {}
    return dict(
        model=llm.get("model"),
        system=prompt.get("system"),
        user=prompt.get("user", ""),
        on_unparseable=llm.get("on_unparseable", "keep"),
        max_new_tokens=llm.get("max_new_tokens", 4),
        batch_size=llm.get("batch_size", 16),
        device=llm.get("device", "cpu"),
        dtype=llm.get("dtype", "float32"),
        max_input_tokens=llm.get("max_input_tokens", 512),
        torch_threads=(cfg["resources"].get("judge") or {}).get("torch_threads"),
    )
