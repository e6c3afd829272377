"""Flagged words and the fast special-character count, as CaptionRules applies them; the perplexity filter."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest

from factory import schema as S
from factory.config import compose
from factory.curate import rules as R


def rows(captions, reasons=None):
    n = len(captions)
    return pa.table({S.ID: [str(i) for i in range(n)], S.CAPTION: captions, S.REASON: pa.array(reasons or [None] * n, pa.string()),
                     S.DETAIL: pa.array([None] * n, pa.string())})


def test_flagged_words_from_conf_reject_at_any_ratio():
    rules_cfg = {k: v for k, v in compose()["curate"]["rules"].items() if k != "_target_"}
    assert "nsfw" in rules_cfg["flagged_words"] and rules_cfg["flagged_max"] == 0.0
    rules = R.CaptionRules(**rules_cfg)
    caps = [
        "A golden retriever resting on a rainy street in Tokyo, with soft morning light.",
        "A NSFW! golden retriever resting on a rainy street in Tokyo, with soft morning light.",
        "A golden retriever resting on a rainy street in Tokyo, with soft gore light.",
        "A golden retriever resting on a rainy street in Tokyo, with soft goreless light.",  # a word, not a substring
    ]
    out = rules(rows(caps))
    reasons, details = out.column(S.REASON).to_pylist(), out.column(S.DETAIL).to_pylist()
    assert reasons == [None, "flagged_words", "flagged_words", None]
    n_words = len(R.words_of(caps[1]))
    assert details[1] == f"{1 / n_words:.4f} > 0.0 (nsfw)"
    # A rejected row keeps its first reason; the ratio threshold is honoured.
    assert rules(rows(caps[1:2], ["duplicate_id"])).column(S.REASON).to_pylist() == ["duplicate_id"]
    lenient = R.CaptionRules(**(rules_cfg | {"flagged_max": 0.2}))
    assert lenient(rows(caps[1:2])).column(S.REASON).to_pylist() == [None]


def test_flagged_word_entries_must_be_single_words():
    with pytest.raises(ValueError, match="'red car' is not one word"):
        R.CaptionRules(flagged_words=["red car"])


@pytest.mark.parametrize("text", ["A plain ASCII caption, with 3 digits & punctuation!", "héllo 😀 wörld ◆ ★ ∑ © ™",
                                  "日本語のテキスト、です。", "tab\there\nnewline", ""])
def test_fast_special_ratio_equals_the_per_character_definition(text):
    expected = sum(R._is_special(c) for c in text) / len(text) if text else 0.0
    assert R.special_ratio(text) == pytest.approx(expected, abs=1e-12)
    assert R.alnum_ratio(text) == pytest.approx(sum(c.isalnum() for c in text) / len(text) if text else 0.0)


def test_perplexity_filter_matches_transformers_loss(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.curate.perplexity import PerplexityFilter
    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    caps = ["a red dog on the street", "blue", "the cat is on a boat with the dog and the people", "a good image of a house"]
    path = str(save_tiny_causal_lm(tmp_path / "lm", " ".join(caps), seed=1))
    flt = PerplexityFilter(enabled=True, model=path, max=1e9, batch_size=3).loaded()
    got = flt.perplexities(caps)
    # Reference: transformers' own causal-LM loss on each caption alone (no padding), BOS first.
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    for cap, p in zip(caps, got):
        ids = tok(tok.bos_token + cap, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = math.exp(model(ids, labels=ids).loss.item())
        assert p == pytest.approx(ref, rel=1e-4)
    limit = sorted(got)[1]  # two at or below, two above
    flt = PerplexityFilter(enabled=True, model=path, max=limit, batch_size=3)
    out = flt(rows(caps, [None, None, None, "too_short"]))
    reasons = out.column(S.REASON).to_pylist()
    expected = [S.R_PERPLEXITY if p > limit else None for p in got[:3]] + ["too_short"]
    assert reasons == expected and reasons.count(S.R_PERPLEXITY) >= 1
    with pytest.raises(ValueError, match="needs model"):
        PerplexityFilter(enabled=True, model=path)  # no max: refused before anything loads


def test_perplexity_filter_device_and_dtype_settings(tmp_path, monkeypatch):
    import torch

    from factory.curate.perplexity import PerplexityFilter
    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    path = str(save_tiny_causal_lm(tmp_path / "lm", "a red dog"))
    on = dict(enabled=True, model=path, max=10.0)
    assert next(PerplexityFilter(**on, dtype="bf16").loaded().lm.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"^curate.perplexity.dtype='half': expected one of"):
        PerplexityFilter(**on, dtype="half")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="^curate.perplexity.device=cuda but this worker sees no CUDA device$"):
        PerplexityFilter(**on, device="cuda").loaded()
