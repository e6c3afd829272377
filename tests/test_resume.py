"""A run killed with SIGKILL mid-synthesis resumes on the same output and ends as if never killed."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.jobs import LOCK_NAME
from tests.conftest import factory_main, factory_run
from tests.crash_helpers import ROOT, kill_when, manifest, parquet_rows, start_cli, wait_gone

N_CAPTIONS, REPEAT = 12, 2
BAD_ROWS = ['{"id": "blank", "caption": "   "}', '{"id": "short", "caption": "A cat."}']


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    lines = (ROOT / "factory" / "data" / "sample_captions.jsonl").read_text().splitlines()[:N_CAPTIONS]
    (d / "captions.jsonl").write_text("\n".join(lines + BAD_ROWS) + "\n")
    return d


def overrides(workdir: Path, output: Path, *extra: str) -> list[str]:
    return [f"input={workdir / 'captions.jsonl'}", f"output={output}", "ray.progress_bars=false", "ray.num_cpus=2",
            "synth.steps=2", f"synth.repeat={REPEAT}", "synth.batch_size=2", "score.batch_size=2",
            "score.ssim_size=64", "score.ssim_low=32", "select.k=6", *extra]


def read_dir(directory: Path, columns=None) -> pa.Table:
    """Every Parquet file of a folder, each opened on its own: a half-written one fails here."""
    tables = [pq.read_table(f, columns=columns) for f in sorted(directory.glob("*.parquet"))]
    return pa.concat_tables(tables) if tables else pa.table({})


def key_counts(candidates: Path) -> dict:
    t = read_dir(candidates, [S.ID, S.SAMPLE])
    counts = t.group_by([S.ID, S.SAMPLE]).aggregate([([], "count_all")])
    return {(r[S.ID], r[S.SAMPLE]): r["count_all"] for r in counts.to_pylist()}


def kept_ids(workdir: Path) -> list[str]:
    """Ids of the captions that pass curation, by the reader's and the rules' own code."""
    from factory.curate.rules import CaptionRules
    from factory.io.read import read_caption_file

    rows = CaptionRules()(read_caption_file(str(workdir / "captions.jsonl"), 0))
    return rows.filter(pc.is_null(rows.column(S.REASON))).column(S.ID).to_pylist()


def status_rows(out: Path) -> dict:
    from factory.status import status_lines

    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in status_lines(str(out)))


@pytest.fixture(scope="module")
def killed_and_resumed(workdir, ray_local):
    """The killed run (a process of its own), checked right after the kill, then resumed with the
    same command; and the uninterrupted reference run."""
    out = workdir / "killed"
    cands = out / "candidates"
    total = len(kept_ids(workdir)) * REPEAT
    proc = start_cli(*overrides(workdir, out), log=workdir / "killed.log")
    tree = kill_when(proc, lambda: parquet_rows(cands) >= 2)
    leftover = wait_gone(tree)
    assert not leftover, f"processes of the killed run still alive: {leftover}"

    after_kill = {
        "rows": parquet_rows(cands),
        "manifest": json.loads((out / "manifest.json").read_text()),  # parses: rewritten atomically
        "candidates": read_dir(cands),  # every file opens whole
        "rejects": read_dir(out / "rejects"),
        "dataset": (out / "dataset").exists(),
        "lock": (out / LOCK_NAME).exists(),  # SIGKILL: no chance to remove it
        "status": status_rows(out),
    }
    assert 0 < after_kill["rows"] < total, "the kill should land in the middle of synthesis"

    rerun = factory_run(*overrides(workdir, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    clean = factory_run(*overrides(workdir, workdir / "clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    return out, after_kill, rerun


def test_a_killed_run_leaves_only_whole_files(killed_and_resumed):
    _, after_kill, _ = killed_and_resumed
    assert after_kill["manifest"]["status"] == "running"
    assert after_kill["candidates"].schema.equals(S.CANDIDATES)
    assert after_kill["candidates"].num_rows == after_kill["rows"]
    # The reader's rejects are whole too (they are written first, while synthesis waits).
    if after_kill["rejects"].num_rows:
        assert after_kill["rejects"].schema.equals(S.REJECTS)
    assert not after_kill["dataset"]  # dataset/ only appears after selection
    assert after_kill["lock"]
    # `status` counts what the killed run left in candidates/, not the manifest's last save
    assert after_kill["manifest"]["counts"].get("generated", 0) < after_kill["rows"]
    assert after_kill["status"]["samples"].startswith(f"{after_kill['rows']:,} generated of at most ")
    assert after_kill["status"]["samples"].endswith("; counted in candidates/ now (the run is gone)")


def test_resume_generates_only_what_is_missing(killed_and_resumed, workdir):
    out, after_kill, rerun = killed_and_resumed
    m = manifest(out)
    total = len(kept_ids(workdir)) * REPEAT
    assert m["status"] == "complete" and m["runs"] == 2
    assert m["counts"]["resumed"] == after_kill["rows"]
    assert m["counts"]["resumed"] + m["counts"]["generated"] == total
    assert m["counts"]["generated"] == total - after_kill["rows"]
    assert f"resumed {after_kill['rows']}, generated {total - after_kill['rows']}" in rerun.stdout
    assert "that is gone; this run takes over" in rerun.stdout  # the killed pid is dead: no wait for the heartbeat
    assert not (out / LOCK_NAME).exists()

    counts = key_counts(out / "candidates")
    assert set(counts) == {(i, s) for i in kept_ids(workdir) for s in range(REPEAT)}
    assert set(counts.values()) == {1}, "an (id, sample) was written twice"
    for f in list((out / "candidates").glob("*.parquet")) + list((out / "rejects").glob("*.parquet")):
        pq.read_table(f)
    rejected = set(read_dir(out / "rejects", [S.ID]).column(S.ID).to_pylist())
    assert {"blank", "short"} <= rejected and not rejected & set(kept_ids(workdir))


def test_resumed_dataset_equals_an_uninterrupted_run(killed_and_resumed, workdir):
    out, _, _ = killed_and_resumed
    clean = workdir / "clean"
    assert manifest(clean)["counts"]["resumed"] == 0 and manifest(clean)["runs"] == 1

    def dataset(path: Path) -> pa.Table:
        t = pads.dataset(path / "dataset", format="parquet").to_table()  # pyarrow reads dataset/ as one
        return t.sort_by([(S.RANK, "ascending")])

    a, b = dataset(out), dataset(clean)
    assert a.num_rows == b.num_rows == 6
    for col in (S.ID, S.SAMPLE, S.SEED, S.RANK, S.CAPTION):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    for col in (S.SCORE, S.CLIP_SCORE, S.SSIM):
        assert pc.max(pc.abs(pc.subtract(a.column(col), b.column(col)))).as_py() <= 1e-6, col


@pytest.mark.parametrize("change, named", [("synth.seed=1", "synth.seed"), ("model.guidance=3.0", "model.guidance")])
def test_resuming_with_other_settings_is_refused_in_one_line(killed_and_resumed, workdir, capsys, change, named):
    out, _, _ = killed_and_resumed
    before = sorted(p.name for p in (out / "candidates").iterdir())
    r = factory_main(capsys, *overrides(workdir, out, change))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and named in lines[0] and "output=" in lines[0]
    assert sorted(p.name for p in (out / "candidates").iterdir()) == before  # nothing touched
    # The documented way on: a new output (checked in the test above) or an explicit override.


def test_a_resume_after_the_input_and_repeat_changed_selects_as_a_fresh_run(killed_and_resumed, workdir, tmp_path):
    """Candidates of captions that left the input, and samples beyond a lowered synth.repeat, stay on
    disk but do not compete: the dataset is the one a fresh run on today's input makes."""
    lines = (workdir / "captions.jsonl").read_text().splitlines()
    new = json.dumps({"id": "new", "caption": "A red kite flying high above a green hill on a windy spring afternoon."})
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(lines[4:] + [new]) + "\n")
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir / "clean", resumed)  # a complete run of the old input at synth.repeat=2

    def args(output: Path) -> list[str]:
        return [f"input={changed}", f"output={output}", "ray.progress_bars=false", "ray.num_cpus=2", "synth.steps=2", "synth.repeat=1",
                "synth.batch_size=2", "score.batch_size=2", "score.ssim_size=64", "score.ssim_low=32", "select.k=6"]

    runs = {output: factory_run(*args(output)) for output in (resumed, tmp_path / "fresh")}
    for r in runs.values():
        assert r.returncode == 0, r.stderr[-3000:]
    m = manifest(resumed)
    old = set(kept_ids(workdir))
    gone = old - {str(json.loads(ln)["id"]) for ln in lines[4:]}
    assert gone and m["counts"]["generated"] == 1  # only the new caption was made
    assert m["counts"]["resumed"] == len(old - gone)  # the samples on disk that count toward this run: sample 0 of each
    assert m["counts"]["not_competing"] == REPEAT * len(gone) + (REPEAT - 1) * len(old - gone)
    assert f"{m['counts']['not_competing']} candidates in {resumed}/candidates do not compete" in runs[resumed].stdout
    # The summary adds up: every sample on disk is resumed, generated or left from the earlier settings.
    assert (f"synthesized {m['counts']['synthesized']} (resumed {len(old - gone)}, generated 1, "
            f"{m['counts']['not_competing']} from earlier settings, not competing)") in runs[resumed].stdout
    assert manifest(tmp_path / "fresh")["counts"]["not_competing"] == 0

    def dataset(path: Path) -> pa.Table:
        return pads.dataset(path / "dataset", format="parquet").to_table().sort_by([(S.RANK, "ascending")])

    a, b = dataset(resumed), dataset(tmp_path / "fresh")
    assert a.num_rows == b.num_rows == 6
    for col in (S.ID, S.SAMPLE, S.SEED, S.RANK):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    assert not set(a.column(S.ID).to_pylist()) & gone
    assert pc.max(pc.abs(pc.subtract(a.column(S.SCORE), b.column(S.SCORE)))).as_py() <= 1e-6
    assert m["selection"]["competing_captions"] == manifest(tmp_path / "fresh")["selection"]["competing_captions"]
    # The report and the per-stage summary show what competed, as the fresh run's do: not all of candidates/.
    select_in = {p: next(s for s in manifest(p)["stages"] if s["stage"] == "select")["rows_in"] for p in runs}
    assert select_in[resumed] == select_in[tmp_path / "fresh"] == len(old - gone) + 1
    heading = {p: re.search(r"Scores: (\d+) competing candidates", (p / "report" / "index.html").read_text()).group(1) for p in runs}
    assert heading[resumed] == heading[tmp_path / "fresh"] == str(len(old - gone) + 1)


def test_a_caption_changed_under_its_id_is_refused_on_resume(killed_and_resumed, workdir, tmp_path):
    """Its samples on disk were made from the old text: resuming would select them for the new one."""
    rows = [json.loads(ln) for ln in (workdir / "captions.jsonl").read_text().splitlines()]
    target = kept_ids(workdir)[2]
    for r in rows:
        if str(r.get("id")) == target:
            r["caption"] = r["caption"].rstrip(".") + ", seen from far above."
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "resumed"
    shutil.copytree(workdir / "clean", out)
    def files_of(run: Path) -> dict:
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != LOCK_NAME}

    before = files_of(out)
    assert manifest(out)["status"] == "complete" and any(k.startswith("rejects/") for k in before)
    r = factory_run(*overrides(workdir, out, f"input={changed}"))
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]  # Ray logs its start on stderr too
    assert "Traceback" not in r.stderr
    assert len(errors) == 1 and errors[0].startswith("error: 1 caption(s) of the input differ") and repr(target) in errors[0], r.stderr
    # Refused before the run changed anything: the finished run's manifest, rejects/ and dataset/ stand as they were.
    assert files_of(out) == before


def test_changed_captions_ignores_case_and_white_space():
    from factory.curate.dedup import text_hash
    from factory.counts import changed_captions

    def table(pairs):
        return pa.table({S.ID: [i for i, _ in pairs], S.NORM_HASH: pa.array([text_hash(c) for _, c in pairs], pa.int64())})

    on_disk = table([("a", "A red car."), ("b", "A blue   boat"), ("c", "A green tree")])
    now = table([("a", "a RED car."), ("b", "A blue boat "), ("c", "A green bush"), ("d", "new")])
    assert changed_captions(now, on_disk).column(S.ID).to_pylist() == ["c"]


def test_best_by_clip_score_reaches_selection_through_the_cli(killed_and_resumed, workdir, tmp_path):
    """Reselecting a finished run with select.best_by=clip_score generates nothing and keeps, per
    caption, the sample with the highest clip_score (pyarrow's own group-by as the reference)."""
    out = tmp_path / "reselected"
    shutil.copytree(workdir / "clean", out)
    r = factory_run(*overrides(workdir, out, "select.best_by=clip_score", "select.k=1000"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert manifest(out)["counts"]["generated"] == 0
    cands = read_dir(out / "candidates", [S.ID, S.SAMPLE, S.CLIP_SCORE, S.SCORE, S.REASON])
    cands = cands.filter(pc.is_null(cands.column(S.REASON)))
    best = cands.group_by(S.ID).aggregate([(S.CLIP_SCORE, "max")])
    want = {}
    for row in cands.join(best, S.ID).to_pylist():
        if row[S.CLIP_SCORE] == row[f"{S.CLIP_SCORE}_max"]:
            want[row[S.ID]] = min(want.get(row[S.ID], row[S.SAMPLE]), row[S.SAMPLE])
    got = pads.dataset(out / "dataset", format="parquet").to_table(columns=[S.ID, S.SAMPLE, S.SCORE, S.RANK]).sort_by(S.RANK)
    assert dict(zip(got.column(S.ID).to_pylist(), got.column(S.SAMPLE).to_pylist())) == want
    by_score = dict(zip(read_dir(workdir / "clean" / "dataset", [S.ID, S.SAMPLE]).column(S.ID).to_pylist(),
                        read_dir(workdir / "clean" / "dataset", [S.ID, S.SAMPLE]).column(S.SAMPLE).to_pylist()))
    assert any(want[i] != by_score[i] for i in by_score if i in want)  # the column made a difference here
    scores = got.column(S.SCORE).to_pylist()
    assert scores == sorted(scores, reverse=True)  # ranked by score, whichever column picked the sample


def test_a_sample_that_ran_out_of_memory_is_made_again_on_resume(killed_and_resumed, workdir, tmp_path):
    """out_of_memory may pass (tiling on, fewer scorers on the GPU): a resumed run makes the sample
    again, counts its newest outcome and selects as the uninterrupted run did."""
    out = tmp_path / "oom"
    shutil.copytree(workdir / "clean", out)
    best = read_dir(out / "dataset", [S.ID, S.SAMPLE, S.RANK]).sort_by(S.RANK).slice(0, 1).to_pylist()[0]
    for f in (out / "candidates").glob("*.parquet"):  # the best sample, as if it had run out of memory
        t = pq.read_table(f)
        hit = pc.and_(pc.equal(t.column(S.ID), best[S.ID]), pc.equal(t.column(S.SAMPLE), best[S.SAMPLE]))
        if pc.any(hit).as_py():
            nan = pa.array([float("nan")] * t.num_rows, pa.float64())
            for col in (S.SCORE, S.CLIP_SCORE, S.SSIM):
                t = t.set_column(t.schema.get_field_index(col), col, pc.if_else(hit, nan, t.column(col)))
            reason = pc.if_else(hit, pa.scalar(S.R_OOM), t.column(S.REASON))
            pq.write_table(t.set_column(t.schema.get_field_index(S.REASON), S.REASON, reason), f)
    r = factory_run(*overrides(workdir, out))
    assert r.returncode == 0, r.stderr[-3000:]
    m, clean = manifest(out), manifest(workdir / "clean")
    assert m["counts"]["generated"] == 1 and m["counts"]["resumed"] == clean["counts"]["synthesized"] - 1
    assert m["counts"]["synthesized"] == clean["counts"]["synthesized"] and m["counts"]["unusable"] == {}
    counts = key_counts(out / "candidates")
    assert counts[(best[S.ID], best[S.SAMPLE])] == 2  # the old row stays on disk, beside the new one
    got = read_dir(out / "dataset", [S.ID, S.SAMPLE, S.RANK]).sort_by(S.RANK)
    want = read_dir(workdir / "clean" / "dataset", [S.ID, S.SAMPLE, S.RANK]).sort_by(S.RANK)
    assert got.to_pylist() == want.to_pylist()
