"""A caption filter added through config only (a class on the path and one config entry, no edit of
factory/): it runs, its rejects carry its reason, and on a resume the captions it now rejects keep
their samples on disk out of the dataset (its declared reasons are what keeps them out)."""
from __future__ import annotations

import json

import pyarrow.dataset as pads

from factory import schema as S
from factory.config import compose
from factory.job import load_job
from tests.conftest import CAPTIONS, factory_run, tiny_overrides, write_jsonl

TOY = "+curate.no_cat={_target_: tests.fixtures.toy_filter.NoWord, word: cat}"
SMALL = ["synth.steps=1", "score.ssim_size=64", "score.ssim_low=32", f"select.k={len(CAPTIONS)}", "report.enabled=false"]


def test_the_filter_joins_the_pipeline_from_config_alone():
    p = load_job(compose([TOY])).pipeline
    assert [type(f).__name__ for f in p.late_filters()] == ["NoWord"]
    assert "no_word" in p.curation_reasons()
    assert load_job(compose([])).pipeline.curation_reasons() == ()


def test_a_resume_with_the_filter_keeps_what_it_rejects_out_of_the_dataset(tmp_path, ray_local):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i + 1, "caption": c} for i, c in enumerate(CAPTIONS)])
    cats = {str(i + 1) for i, c in enumerate(CAPTIONS) if "cat" in c.lower().replace(",", " ").split()}
    assert cats  # the sample has a cat in it
    out = tmp_path / "run"
    first = factory_run(*tiny_overrides(out, inp, *SMALL))
    assert first.returncode == 0, first.stderr[-3000:]
    dataset = pads.dataset(str(out / "dataset")).to_table().column(S.ID).to_pylist()
    assert cats <= set(dataset)  # without the filter every caption is selected (k = all)

    again = factory_run(*tiny_overrides(out, inp, *SMALL), TOY)
    assert again.returncode == 0, again.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["generated"] == 0 and m["counts"]["rejected_by_reason"]["no_word"] == len(cats)
    assert m["counts"]["not_competing"] == len(cats)  # their samples stay on disk, out of selection
    dataset = pads.dataset(str(out / "dataset")).to_table().column(S.ID).to_pylist()
    assert not cats & set(dataset) and len(dataset) == len(CAPTIONS) - len(cats)
    rejects = pads.dataset(str(out / "rejects")).to_table().to_pylist()
    assert {r[S.ID] for r in rejects if r[S.REASON] == "no_word"} == cats
