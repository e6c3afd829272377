"""`python -m factory curate`: curation on its own writes curated/, rejects/ and a manifest with the
counts a full run records; a run from OUTPUT/curated makes the dataset a run from the raw input makes."""
from __future__ import annotations

import json

import pyarrow.dataset as pads

from factory import schema as S
from tests.conftest import CAPTIONS, factory_main, factory_run, tiny_overrides, write_jsonl

SMALL = ["synth.steps=1", "score.ssim_size=32", "score.ssim_low=16", "select.k=4", "report.enabled=false"]
BAD = [{"id": "dup", "caption": CAPTIONS[0]}, {"id": "short", "caption": "A cat."}, {"id": "blank", "caption": "  "}]
COUNTS = ("read", "rejected", "rejected_by_reason", "curated")


def table(folder, columns):
    return pads.dataset(str(folder)).to_table(columns=columns)


def test_curate_then_synthesize_from_curated_equals_a_full_run(tmp_path, capsys, ray_local):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"c{i}", "caption": c} for i, c in enumerate(CAPTIONS[:6])] + BAD)
    cur = factory_run("curate", f"input={inp}", f"output={tmp_path / 'cur'}", "ray.progress_bars=false")
    assert cur.returncode == 0, cur.stderr[-3000:]
    m = json.loads((tmp_path / "cur" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["kind"] == "curate"
    curated = table(tmp_path / "cur" / "curated", None)
    assert curated.schema == S.CURATED
    assert sorted(curated.column(S.ID).to_pylist()) == [f"c{i}" for i in range(6)]
    assert sorted(curated.column(S.SOURCE).to_pylist()) == sorted(f"{inp}:{i + 1}" for i in range(6))  # file:line
    assert f"curated {len(curated)}" in cur.stdout

    full = factory_run(*tiny_overrides(tmp_path / "full", inp, *SMALL))
    assert full.returncode == 0, full.stderr[-3000:]
    mf = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert {k: m["counts"][k] for k in COUNTS} == {k: mf["counts"][k] for k in COUNTS}
    cols = [S.ID, S.REASON]
    assert sorted(table(tmp_path / "cur" / "rejects", cols).to_pylist(), key=str) == \
        sorted(table(tmp_path / "full" / "rejects", cols).to_pylist(), key=str)

    again = factory_run(*tiny_overrides(tmp_path / "from_curated", tmp_path / "cur" / "curated", *SMALL))
    assert again.returncode == 0, again.stderr[-3000:]
    cols = [S.ID, S.SAMPLE, S.GENERATOR, S.SEED, S.SCORE, S.RANK, S.IMAGE]
    assert table(tmp_path / "from_curated" / "dataset", cols).sort_by(S.RANK).to_pylist() == \
        table(tmp_path / "full" / "dataset", cols).sort_by(S.RANK).to_pylist()

    refused = factory_main(capsys, "curate", f"input={inp}", f"output={tmp_path / 'full'}")
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "holds a full run" in lines[0], refused.stderr[-2000:]
