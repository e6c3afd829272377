"""A CLI run forced through the distributed pre-pass and selection (ray.local_scan_mb=0,
ray.local_select_mb=0) rejects the same rows for the same reasons and selects the same dataset/
rows (id, sample, generator, rank) as a run through the driver paths: exact copies (case and white
space), repeated ids and planted near duplicates under mixed ids, two samples a caption."""
from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest

from factory import schema as S
from tests.conftest import factory_run, tiny_overrides, write_jsonl
from tests.fixtures.planted import planted_pool

SMALL = ["synth.steps=1", "synth.repeat=2", "score.ssim_size=64", "score.ssim_low=32", "select.k=9", "report.enabled=false",
         "curate.near_dup.enabled=true"]


def pool(tmp_path):
    captions, near = planted_pool(24, near_fraction=0.25, exact_fraction=0.0, seed=7)
    ids = [str(100 - i) if i % 3 else f"c{i}" for i in range(len(captions))]  # keepers by id, not by pos
    rows = [{"id": i, "caption": c} for i, c in zip(ids, captions)]
    rows += [{"id": "x1", "caption": "  " + captions[0].upper() + " "}, {"id": ids[5], "caption": captions[5] + " again, twice"}]
    return write_jsonl(tmp_path / "in.jsonl", rows), len(near)


def outputs(out):
    rejects = sorted((r[S.ID], r[S.REASON], r[S.DETAIL]) for r in pads.dataset(str(out / "rejects")).to_table().to_pylist())
    t = pads.dataset(str(out / "dataset")).to_table(columns=[S.ID, S.SAMPLE, S.GENERATOR, S.RANK]).sort_by(S.RANK)
    return rejects, t.to_pylist(), json.loads((out / "manifest.json").read_text())


def test_distributed_paths_give_the_local_result(tmp_path, ray_local):
    inp, n_near = pool(tmp_path)
    local = factory_run(*tiny_overrides(tmp_path / "local", inp, *SMALL))
    assert local.returncode == 0, local.stderr[-3000:]
    dist = factory_run(*tiny_overrides(tmp_path / "dist", inp, *SMALL, "ray.local_scan_mb=0", "ray.local_select_mb=0"))
    assert dist.returncode == 0, dist.stderr[-3000:]
    (rej_a, data_a, m_a), (rej_b, data_b, m_b) = outputs(tmp_path / "local"), outputs(tmp_path / "dist")
    reasons = {r[1] for r in rej_a}
    assert {S.R_DUP_ID, S.R_DUP_CAPTION, S.R_NEAR_DUP} <= reasons and n_near > 0
    assert rej_b == rej_a
    assert len(data_a) == 9 and data_b == data_a
    for key in ("rejected_by_reason", "selected", "not_competing"):
        assert m_b["counts"][key] == m_a["counts"][key], key
    # The same rows; their scores only as close as two batchings of the same float work allow.
    assert m_b["selection"] == pytest.approx(m_a["selection"], abs=1e-5)


def test_scale_benchmark_checks_itself_against_the_driver(ray_local, tmp_path):
    """benchmarks/scale_curate.py at a tiny size: the distributed pre-pass's losers and kept rows
    equal the driver path's (it exits otherwise); its last line is captions/s and peak RSS."""
    from benchmarks import scale_curate

    rate, rss = scale_curate.main(["--captions", "600", "--files", "2", "--check", "--dir", str(tmp_path)])
    assert rate > 0 and rss > 0
