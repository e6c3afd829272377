"""The experiment recipes compose to the paper's settings; select.fraction resolves exactly."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from decimal import ROUND_CEILING, Decimal

import numpy as np
import pyarrow as pa
import pytest
import yaml

from conftest import ROOT
from factory.config import compose
from factory.select import resolve_k, select_top_k


def test_synthvlm_recipe():
    c = compose(["+experiment=synthvlm"])
    m = c["model"]
    assert m["path"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert m["refiner_path"] == "stabilityai/stable-diffusion-xl-refiner-1.0" and m["high_noise_frac"] == 0.8
    assert (m["height"], m["width"]) == (1024, 1024)
    assert c["synth"]["steps"] == 60 and c["synth"]["guidance"] == 20.0 and c["synth"]["repeat"] == 1
    assert c["scorer"]["arch"] == "ViT-L-14-336" and c["score"]["lam"] == 0.5
    assert c["select"] == {"k": None, "fraction": 0.1, "best_by": "clip_score"}
    assert c["curate"]["rules"]["min_chars"] is None and c["curate"]["rules"]["max_chars"] is None  # not among the paper's rules
    assert c["curate"]["llm"]["enabled"] and c["curate"]["llm"]["backend"] == "vllm"
    assert c["curate"]["rules"]["alnum_min"] == 0.60 and c["curate"]["rules"]["flagged_max"] == 0.0


def test_fast_recipe_trades_steps_for_throughput():
    fast, paper = compose(["+experiment=fast"]), compose(["+experiment=synthvlm"])
    assert fast["synth"]["steps"] < paper["synth"]["steps"] and fast["model"]["refiner_path"] is None
    assert fast["synth"]["batch_size"] > paper["synth"]["batch_size"]
    assert fast["select"]["k"] is None and fast["select"]["fraction"] == 0.1


def test_cli_composes_the_recipe():
    """Through the real entry point: Hydra prints the job config without running it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "factory", "+experiment=synthvlm", "--cfg", "job"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    cfg = yaml.safe_load(out)
    assert cfg["model"]["steps"] == 60 and cfg["select"]["fraction"] == 0.1 and cfg["select"]["k"] is None


def exact_ceiling(n: int, fraction: float) -> int:
    """⌈fraction · n⌉ in decimal arithmetic, on the fraction as written (0.07, not 0.0700000000000000067…)."""
    return int((Decimal(str(fraction)) * n).to_integral_value(rounding=ROUND_CEILING))


@pytest.mark.parametrize("n,fraction", [(1000, 0.1), (7, 0.1), (3, 0.5), (10, 1.0), (0, 0.3), (9, 0.3333),
                                        (100, 0.07), (100, 0.55), (1_000_000, 0.14), (300, 0.81)])
def test_fraction_is_the_ceiling_of_its_share(n, fraction):
    assert resolve_k(n, None, fraction) == exact_ceiling(n, fraction)
    assert resolve_k(n, 5, fraction) == exact_ceiling(n, fraction)  # fraction wins over k
    with pytest.raises(ValueError, match="select.fraction must be in"):
        resolve_k(n, None, 1.5)


def test_a_float_product_would_keep_one_pair_too_many():
    assert math.ceil(0.07 * 100) == 8  # why resolve_k does not multiply floats
    assert resolve_k(100, None, 0.07) == 7


def test_selection_by_fraction_matches_a_sort():
    rng = np.random.default_rng(0)
    n = 57
    scores = pa.table({"id": [f"c{i:03d}" for i in range(n) for _ in range(2)], "sample": pa.array([0, 1] * n, pa.int32()),
                       "score": rng.random(2 * n), "clip_score": rng.random(2 * n), "ssim": rng.random(2 * n)})
    chosen, _, competing = select_top_k(scores, None, 0.1)
    best = scores.group_by("id").aggregate([("score", "max")]).sort_by([("score_max", "descending"), ("id", "ascending")])
    assert competing == n and chosen.num_rows == exact_ceiling(n, 0.1)
    assert chosen.column("id").to_pylist() == best.column("id").to_pylist()[: chosen.num_rows]


# The paper's caption rules (SynthVLM, appendix: Data-Juicer operators and their thresholds).
PAPER_RULES = {"alnum_min": 0.60, "char_rep_max": 0.0937, "word_rep_max": 0.0309, "special_min": 0.165, "special_max": 0.420,
               "flagged_max": 0.0, "rep_len": 10}


@pytest.mark.parametrize("recipe", [[], ["+experiment=synthvlm"], ["+experiment=fast"]])
def test_every_recipe_keeps_the_papers_rule_thresholds(recipe):
    rules = compose(recipe)["curate"]["rules"]
    assert rules["enabled"] and {k: rules[k] for k in PAPER_RULES} == PAPER_RULES
