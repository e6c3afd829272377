"""Several generators in one run (synth.generators): every family's tiny pipeline through the CLI;
samples keyed and resumed per (id, sample, generator), a kill and a resume, a generator added to a
finished output makes only its own samples, and best-of-N across generators then the global top-K
equal what pyarrow's own group_by and sort pick from candidates/."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.config import compose
from factory.estimate import estimate, table_lines
from factory.job import load_job
from tests.conftest import factory_main, factory_run
from tests.crash_helpers import ROOT, kill_when, parquet_rows, start_cli, wait_gone

N_CAPTIONS, K = 6, 3


def small(synth_cpus: float = 0.25) -> list[str]:
    return ["ray.progress_bars=false", "ray.num_cpus=4", f"resources.synth.num_cpus={synth_cpus}", "score.batch_size=2",
            "score.ssim_size=32", "score.ssim_low=16", f"select.k={K}", "report.enabled=true"]


SMALL = small()


def generators(*names: str, **steps: int) -> list[str]:
    """synth.generators=[names], each at 1 step (or steps[name]) and batch 2."""
    out = [f"synth.generators=[{','.join(names)}]"]
    for n in names:
        out += [f"generators.{n}.steps={steps.get(n, 1)}", f"generators.{n}.batch_size=2"]
    return out


BOTH = ("tiny", "tiny_flux")
# The run that adds tiny_flux is killed while it makes its samples. At 3 steps a batch of two took
# 0.05 s and, on a busy machine, all six were written before the kill landed; at 100 steps a batch
# takes about 0.5 s (2 cores), so the kill after the first file lands with two batches to go.
SLOW_FLUX = {"tiny_flux": 100}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("generators")
    lines = (ROOT / "factory" / "data" / "sample_captions.jsonl").read_text().splitlines()
    (d / "captions.jsonl").write_text("\n".join(lines[:N_CAPTIONS]) + "\n")
    return d


def read_dir(directory: Path, columns=None) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in sorted(directory.glob("*.parquet"))])


def files_of(directory: Path) -> dict[str, float]:
    return {f.name: f.stat().st_mtime_ns for f in directory.glob("*.parquet")}


def generator_rows(cands: Path, name: str) -> int:
    if not cands.is_dir() or not any(cands.glob("*.parquet")):
        return 0
    parquet_rows(cands)  # every file whole
    return int(pc.sum(pc.equal(read_dir(cands, [S.GENERATOR]).column(S.GENERATOR), name)).as_py() or 0)


def reference_selection(cands: pa.Table, k: int) -> pa.Table:
    """Best sample per caption across generators (ties: lower sample, then generator name), then
    the top k by score (ties: smaller id), with pyarrow's own sort."""
    ok = cands.filter(pc.is_null(cands.column(S.REASON)))
    order = ok.sort_by([(S.ID, "ascending"), (S.SCORE, "descending"), (S.SAMPLE, "ascending"), (S.GENERATOR, "ascending")])
    ids = order.column(S.ID).to_pylist()
    best = order.take([i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]])
    return best.sort_by([(S.SCORE, "descending"), (S.ID, "ascending")]).slice(0, k)


@pytest.fixture(scope="module")
def grown(workdir, ray_local):
    """An output made by one generator, then grown by a second: the run that adds it is killed
    while it makes its samples and resumed with the same command."""
    out, cands = workdir / "grown", workdir / "grown" / "candidates"
    first = factory_run(f"input={workdir / 'captions.jsonl'}", f"output={out}", *SMALL, *generators("tiny"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = files_of(cands)
    both = [f"input={workdir / 'captions.jsonl'}", f"output={out}", *SMALL, *generators(*BOTH, **SLOW_FLUX)]
    proc = start_cli(*both, log=workdir / "killed.log")
    tree = kill_when(proc, lambda: generator_rows(cands, "tiny_flux") >= 2)
    assert not wait_gone(tree)
    killed_at = generator_rows(cands, "tiny_flux")
    resumed = factory_run(*both)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, before, killed_at, resumed


def test_a_generator_added_to_a_finished_output_makes_only_its_samples(grown):
    out, before, killed_at, _ = grown
    assert 0 < killed_at < N_CAPTIONS, "the kill should land while tiny_flux makes its samples"
    after = files_of(out / "candidates")
    assert {n: after[n] for n in before} == before  # the first generator's files are untouched
    cands = read_dir(out / "candidates")
    keys = cands.group_by([S.ID, S.SAMPLE, S.GENERATOR]).aggregate([([], "count_all")])
    assert keys.num_rows == 2 * N_CAPTIONS and pc.max(keys.column("count_all")).as_py() == 1  # each sample once
    made = pc.value_counts(cands.column(S.GENERATOR)).to_pylist()
    assert {m["values"]: m["counts"] for m in made} == {"tiny": N_CAPTIONS, "tiny_flux": N_CAPTIONS}
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["resumed"] + m["counts"]["generated"] == 2 * N_CAPTIONS
    assert m["counts"]["resumed"] >= N_CAPTIONS + killed_at  # neither the first run's nor the killed run's samples made again


def test_best_of_n_across_generators_then_top_k(grown):
    out = grown[0]
    chosen = read_dir(out / "dataset").sort_by([(S.RANK, "ascending")])
    want = reference_selection(read_dir(out / "candidates"), K)
    cols = [S.ID, S.SAMPLE, S.GENERATOR, S.SCORE]
    assert chosen.select(cols).to_pylist() == want.select(cols).to_pylist()
    widths = {(r[S.GENERATOR], r[S.WIDTH]) for r in read_dir(out / "candidates", [S.GENERATOR, S.WIDTH]).to_pylist()}
    assert len(widths) == 2  # one size per generator: the families' own


def test_generators_are_compared_in_manifest_summary_and_report(grown):
    out, _, _, resumed = grown
    m = json.loads((out / "manifest.json").read_text())
    assert m["generators"] == ["tiny", "tiny_flux"]
    by = m["by_generator"]
    chosen = read_dir(out / "dataset", [S.GENERATOR]).column(S.GENERATOR).to_pylist()
    for name in ("tiny", "tiny_flux"):
        assert by[name]["samples"] == N_CAPTIONS
        assert by[name]["selected"] == chosen.count(name)
        assert by[name]["share_selected"] == pytest.approx(chosen.count(name) / len(chosen), abs=1e-4)
    assert by["tiny_flux"]["made_this_run"] == N_CAPTIONS - grown[2] and by["tiny"]["made_this_run"] == 0
    assert by["tiny_flux"]["busy_s"] > 0 and by["tiny_flux"]["busy_s_per_sample"] > 0
    assert any(line.startswith("tiny_flux ") and "won" in line for line in resumed.stdout.splitlines())
    report = (out / "report" / "index.html").read_text()
    assert "<h2>Generators</h2>" in report and "tiny_flux" in report
    assert (out / "report" / "generators.png").stat().st_size > 1000


def test_a_generators_changed_setting_is_refused_and_named(grown, capsys):
    out = grown[0]
    r = factory_main(capsys, f"output={out}", *SMALL, *generators(*BOTH, **SLOW_FLUX), "generators.tiny_flux.guidance=1.0")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-2000:]
    assert "generators.tiny_flux.guidance" in lines[0] and "generators.tiny." not in lines[0]


def test_every_tiny_family_in_one_run(tmp_path, workdir, ray_local):
    names = ["tiny_sd3", "tiny_flux", "tiny_pixart", "tiny_sana"]
    out, few = tmp_path / "all", 2
    inp = tmp_path / "two.jsonl"
    inp.write_text("".join((workdir / "captions.jsonl").read_text().splitlines(keepends=True)[:few]))
    # four synthesis actors at an eighth of a CPU each and the scorer's half: one CPU stays whole for Ray Data's repartition
    r = factory_run(f"input={inp}", f"output={out}", *small(synth_cpus=0.125)[:-1], "select.k=2", "report.enabled=false",
                    *generators(*names))
    assert r.returncode == 0, r.stderr[-3000:]
    cands = read_dir(out / "candidates", [S.GENERATOR, S.REASON, S.SCORE])
    made = {m["values"]: m["counts"] for m in pc.value_counts(cands.column(S.GENERATOR)).to_pylist()}
    assert made == {n: few for n in names}
    assert cands.column(S.REASON).null_count == cands.num_rows  # every image usable and scored
    assert pc.all(pc.is_finite(cands.column(S.SCORE))).as_py()


def test_the_estimate_times_every_generator(workdir):
    """`python -m factory estimate` calibrates each generator with the scorer: GPU-hours are the
    sum over generators of their images × their own seconds per image."""
    cfg = compose([f"input={workdir / 'captions.jsonl'}", "synth.repeat=1", "score.ssim_size=32", "score.ssim_low=16",
                   *generators(*BOTH)])
    e = estimate(load_job(cfg))
    assert set(e["by_generator"]) == set(BOTH) and all(v > 0 for v in e["by_generator"].values())
    assert e["images"] == 2 * e["curated"] > 0
    assert e["gpu_hours"] == pytest.approx(e["curated"] * sum(e["by_generator"].values()) / 3600)
    by_line = [ln for ln in table_lines(e) if ln.startswith("seconds per image, by generator")]
    assert len(by_line) == 1 and all(n in by_line[0] for n in BOTH)
