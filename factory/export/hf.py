"""A Hugging Face Hub dataset card: dataset/README.md, so `datasets.load_dataset(dataset/)` loads it as is.

The card's `configs` pins the data files to the top-level Parquet parts: without it `datasets`
would infer the format from whatever else lies in the folder (llava.json, wds/*.tar, images/).
It names each part, not `*.parquet`: `datasets` 5 keys its cache of a card-bearing folder on the
card's YAML and the folder's name alone, so with a pattern every run's `dataset/` would load the
rows cached from whichever was loaded first. Part names are hashes of their rows' keys.
Its `dataset_info.features` declares `image` an Image, so rows come back as PIL images.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import yaml

from factory import schema as S
from factory.export.common import dataset_batches, dataset_files
from factory.io import files
from factory.io.redact import redact_all

# The card's features, derived from the dataset schema; image bytes are declared as images.
_HF_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float64(): "float64"}
FEATURES = [{"name": f.name, "dtype": "image" if f.name == S.IMAGE else _HF_DTYPES[f.type]} for f in S.DATASET]


def score_summary(dataset_dir: str) -> dict:
    """min / mean / median / max of each score over the dataset, from the score columns alone."""
    cols = {c: [] for c in (S.CLIP_SCORE, S.SSIM, S.SCORE)}
    for batch in dataset_batches(dataset_dir, list(cols), batch_size=65536):
        for c in cols:
            cols[c].append(batch.column(c).to_numpy(zero_copy_only=False))
    out = {}
    for c, parts in cols.items():
        v = np.concatenate(parts) if parts else np.empty(0)
        out[c] = {k: (round(float(f(v)), 4) if len(v) else None) for k, f in (("min", np.min), ("mean", np.mean), ("median", np.median), ("max", np.max))}
    return out


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M" if n < 100_000_000 else "n>100M"


def front_matter(n_rows: int, parts: list[str]) -> dict:
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": sorted(parts)}]}],
        "dataset_info": {"features": FEATURES},
        "task_categories": ["image-to-text", "text-to-image"],
        "tags": ["synthetic", "synthvlm", "image-captioning"],
        "size_categories": [size_category(n_rows)],
    }


BUILT_IN = ("rules", "dedup", "near_dup", "perplexity", "llm")


def curation_steps(curate: dict) -> str:
    """What curated the captions under `curate` (the run's config), in words."""
    rules = curate.get("rules") or {}
    steps = ["rules"] if rules.get("enabled", True) else []
    dedup = curate.get("dedup") or {}
    if dedup.get("captions", True):
        steps.append("exact deduplication")
    if (curate.get("near_dup") or {}).get("enabled"):
        steps.append("near-duplicate removal (MinHash + LSH)")
    if (curate.get("perplexity") or {}).get("enabled"):
        steps.append(f"a perplexity filter (`{curate['perplexity'].get('model')}`)")
    if (curate.get("llm") or {}).get("enabled"):
        steps.append(f"an LLM judge (`{curate['llm'].get('model')}`)")
    for name, node in curate.items():  # caption filters of the user's own
        if name not in BUILT_IN and (node or {}).get("enabled", True):
            steps.append(f"a filter `{name}` (`{node.get('_target_')}`)")
    if not steps:
        return "not curated"
    return "curated by " + (", ".join(steps[:-1]) + " and " + steps[-1] if len(steps) > 1 else steps[0])


def card_text(counts: dict, config: dict, scores: dict, exports: list[str], parts: list[str]) -> str:
    """The card's text; URIs in `config` (the run's) appear without their credentials: it is made to be shared."""
    config = redact_all(config)
    n = int(counts.get("selected", 0))
    model, scorer, score, sel = config.get("model", {}), config.get("scorer", {}), config.get("score", {}), config.get("select", {})
    rows = "\n".join(
        f"| {c} | {s['min']} | {s['mean']} | {s['median']} | {s['max']} |" for c, s in scores.items()
    )
    counts_rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items() if not isinstance(v, dict))
    rejects = counts.get("rejected_by_reason") or {}
    rejects_text = ", ".join(f"{k} {v}" for k, v in rejects.items()) or "none"
    extra = "".join(f"\n- {e}" for e in exports)
    curated = curation_steps(config.get("curate") or {})
    return f"""---
{yaml.safe_dump(front_matter(n, parts), sort_keys=False).strip()}
---

# Synthetic image–caption dataset

{n} image–caption pairs made by synth-factory following SynthVLM (arXiv 2407.20756): captions were
{curated}, each turned into {config.get('synth', {}).get('repeat', 1)} image(s) by
`{model.get('path')}` ({config.get('synth', {}).get('steps')} steps, guidance {config.get('synth', {}).get('guidance')}),
scored by CLIPScore (`{scorer.get('arch')}`, weights `{scorer.get('pretrained')}`) + {score.get('lam')} × SSIM of a
{score.get('ssim_size')}→{score.get('ssim_low')}→{score.get('ssim_size')} px round trip, and the best sample of each caption
(by {sel.get('best_by') or 'score'}) competed for the global top {sel.get('k') if sel.get('fraction') is None else f"{sel.get('fraction') * 100:.4g}%"} by score.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder", split="train")  # image: PIL image, caption: str, rank: 1 = best
```

## Files

- `*.parquet`: the pairs, with the image bytes and every score (what `load_dataset` reads){extra}

## Counts

| stage | rows |
|---|---|
{counts_rows}

Rejected by reason: {rejects_text}.

## Scores of the selected pairs

| score | min | mean | median | max |
|---|---|---|---|---|
{rows}

## Configuration

```json
{json.dumps(config, indent=2, default=str)}
```
"""


def write_card(dataset_dir: str, counts: dict, config: dict) -> dict:
    """Write README.md (the dataset card) into the dataset folder."""
    exports = []
    for name, label in (("llava.json", "`llava.json`: LLaVA pretraining JSON, the images under `images/`"),
                        ("wds", "`wds/shard-*.tar`: WebDataset shards (KEY.png|jpg|webp, KEY.txt, KEY.json)")):
        if files.exists(files.join(dataset_dir, name)):
            exports.append(label)
    parts = [p.rsplit("/", 1)[-1] for p in dataset_files(dataset_dir)]  # top level only: not images/
    text = card_text(counts, config, score_summary(dataset_dir), exports, parts)
    files.write_bytes_atomic(files.join(dataset_dir, "README.md"), text.encode("utf-8"))
    return {"file": "README.md", "rows": int(counts.get("selected", 0))}
