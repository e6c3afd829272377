"""A CLI run forced through the distributed pre-pass and selection (ray.local_scan_mb=0,
ray.local_select_mb=0) rejects the same rows for the same reasons and selects the same dataset/
rows (id, sample, generator, rank) as a run through the driver paths: exact copies (case and white
space), repeated ids and planted near duplicates under mixed ids, two samples a caption; and its
resume with a late filter selects what the driver path's select_top_k selects from its samples."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from factory import schema as S
from factory.io import files
from factory.select import read_scores, select_top_k
from tests.conftest import factory_run, tiny_overrides, write_jsonl
from tests.fixtures.planted import planted_pool
from tests.fixtures.toy_filter import NoWord

SMALL = ["synth.steps=1", "synth.repeat=2", "score.ssim_size=64", "score.ssim_low=32", "select.k=9", "report.enabled=false",
         "curate.near_dup.enabled=true"]


NO_BOKEH = "+curate.no_bokeh={_target_: tests.fixtures.toy_filter.NoWord, word: bokeh}"


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


def curated_ids(out) -> list[str]:
    """curated_ids.parquet: a file (driver path) or a folder written by the workers."""
    return sorted(pads.dataset(str(out / "curated_ids.parquet")).to_table().column(S.ID).to_pylist())


def same_outputs(tmp_path, n_selected):
    (rej_a, data_a, m_a), (rej_b, data_b, m_b) = outputs(tmp_path / "local"), outputs(tmp_path / "dist")
    assert rej_b == rej_a
    assert len(data_a) == n_selected and data_b == data_a
    for key in ("rejected_by_reason", "selected", "not_competing", "resumed", "generated", "samples_at_most"):
        assert m_b["counts"][key] == m_a["counts"][key], key
    # The same rows; their scores only as close as two batchings of the same float work allow.
    assert m_b["selection"] == pytest.approx(m_a["selection"], abs=1e-5)
    assert curated_ids(tmp_path / "dist") == curated_ids(tmp_path / "local")
    return rej_a


def late_filter_reference(out, inp, rejects_before, k):
    """What the driver path makes of a resume of `out` with NO_BOKEH and select.k=`k`: its rejects
    are the first run's plus a no_word row for each curated caption with the word; the dataset is
    select_top_k (factory/select.py) over the samples on disk of the other curated captions."""
    first = {}
    for row in map(json.loads, inp.read_text().splitlines()):
        first.setdefault(row["id"], row["caption"])  # the row of an id that the pre-pass keeps
    curated = curated_ids(out)
    bokeh = sorted(i for i in curated if NoWord(word="bokeh").judge([first[i]])[0])
    rejects = sorted(rejects_before + [(i, "no_word", "bokeh") for i in bokeh])
    scores = read_scores(files.list_files(str(out / "candidates"), ".parquet"))
    chosen, _, _ = select_top_k(scores.filter(pc.invert(pc.is_in(scores.column(S.ID), pa.array(bokeh, pa.string())))), k)
    rows = sorted(zip(*(chosen.column(c).to_pylist() for c in (S.RANK, S.ID, S.SAMPLE))))
    return rejects, [{S.ID: i, S.SAMPLE: n, S.RANK: r} for r, i, n in rows], bokeh, sorted(set(curated) - set(bokeh))


def test_distributed_paths_give_the_local_result(tmp_path, ray_local):
    """A first run on both paths, then a resume of the distributed output with a late caption
    filter added (the resume checks, the count of samples on disk that still count, the curated
    ids and selection: keyed joins on the workers after a distributed pre-pass) against what the
    driver path's selection makes of the same samples, then the refused resume of a changed caption."""
    inp, n_near = pool(tmp_path)
    flags = {"local": (), "dist": ("ray.local_scan_mb=0", "ray.local_select_mb=0")}
    for name, extra in flags.items():
        done = factory_run(*tiny_overrides(tmp_path / name, inp, *SMALL, *extra))
        assert done.returncode == 0, done.stderr[-3000:]
    rejects = same_outputs(tmp_path, 9)
    assert {S.R_DUP_ID, S.R_DUP_CAPTION, S.R_NEAR_DUP} <= {r[1] for r in rejects} and n_near > 0

    dist = tmp_path / "dist"
    reference = late_filter_reference(dist, inp, rejects, 6)
    done = factory_run(*tiny_overrides(dist, inp, *SMALL, *flags["dist"], "select.k=6", NO_BOKEH))
    assert done.returncode == 0, done.stderr[-3000:]
    got_rejects, data, m = outputs(dist)
    want_rejects, want_data, bokeh, want_curated = reference
    assert bokeh and got_rejects == want_rejects
    assert [{c: r[c] for c in (S.ID, S.SAMPLE, S.RANK)} for r in data] == want_data and len(data) == 6
    assert curated_ids(dist) == want_curated
    c = m["counts"]
    assert c["generated"] == 0 and c["rejected_by_reason"]["no_word"] == len(bokeh)
    assert c["not_competing"] == 2 * len(bokeh)  # their two samples stay on disk, out of selection
    assert c["resumed"] == c["samples_at_most"] - c["not_competing"]

    rows = [json.loads(line) for line in inp.read_text().splitlines()]
    changed = data[0][S.ID]  # a selected caption: its samples are on disk
    row = next(r for r in rows if r["id"] == changed)  # the first row of the id: the one kept
    row["caption"] = row["caption"].replace(" in ", " high in ", 1).replace(" on ", " high on ", 1)
    write_jsonl(inp, rows)
    refused = factory_run(*tiny_overrides(dist, inp, *SMALL, *flags["dist"]))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    # the driver path's wording (tests/test_resume.py), from the same function
    assert refused.returncode != 0 and len(errors) == 1 and repr(changed) in errors[0]
    assert errors[0].startswith(f"error: 1 caption(s) of the input differ from the captions their ids' samples in {dist}")


def test_scale_benchmark_checks_itself_against_the_driver(ray_local, tmp_path):
    """benchmarks/scale_curate.py at a tiny size, its curate runs through main() on this session's
    Ray: the distributed curation's curated/, rejects/ and counts equal the driver path's (it exits
    otherwise); its last line is captions/s and the driver's peak RSS from the manifest. Six files:
    the keys of the six scanned blocks go into the shuffles joined into four (dist_prepass.keys_dataset)."""
    from benchmarks import scale_curate

    def run_cli(argv):
        done = factory_run(*argv)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.returncode

    rate, rss = scale_curate.main(["--captions", "600", "--files", "6", "--check", "--dir", str(tmp_path)], run_cli=run_cli)
    assert rate > 0 and rss > 100  # MiB: a driver with torch and Ray imported
