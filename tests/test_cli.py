"""`python -m factory` end to end on a local Ray, and its one-line errors."""
import json
import os
import subprocess
import sys

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from tests.conftest import CAPTIONS, ROOT, factory_main, factory_run, tiny_overrides, write_jsonl


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    return subprocess.run([sys.executable, "-m", "factory", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    rows = [{"id": i + 1, "caption": c} for i, c in enumerate(CAPTIONS)]
    rows += [
        "{broken json",
        {"id": 100},
        {"id": 101, "caption": "   "},
        {"id": 1, "caption": "A different caption that reuses the id of the first row."},
        {"id": 102, "caption": CAPTIONS[0].upper()},
        {"id": 103, "caption": " ".join(CAPTIONS[:9])},  # ~680 chars: far past CLIP's 77 tokens
    ]
    inp = write_jsonl(tmp / "captions.jsonl", rows)
    out = tmp / "run"
    proc = run_cli(*tiny_overrides(out, inp, "synth.repeat=2", "curate.rules.max_chars=2000", "progress_every_s=1e-9"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_outputs_and_manifest(finished_run):
    out, proc = finished_run
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert m["status"] == "complete"
    assert c["read"] == len(CAPTIONS) + 6
    assert c["rejected_by_reason"] == {S.R_MALFORMED: 1, S.R_NO_CAPTION: 1, S.R_BLANK: 1, S.R_DUP_ID: 1, S.R_DUP_CAPTION: 1}
    assert c["curated"] == len(CAPTIONS) + 1
    assert c["synthesized"] == 2 * c["curated"] == c["generated"] and c["resumed"] == 0
    assert c["selected"] == 5
    assert m["config"]["synth"]["repeat"] == 2
    assert {"ray", "torch", "diffusers", "open_clip_torch"} <= set(m["versions"])
    assert set(m["wall_seconds"]) >= {"scan", "generate", "select", "total"}
    assert "selected 5" in proc.stdout
    # Without model stages the pre-pass's bound is exact; a progress line came with every file written.
    assert c["samples_at_most"] == c["synthesized"]
    lines = [ln for ln in proc.stdout.splitlines() if "progress: " in ln]
    assert lines and f"progress: {c['synthesized']} of at most {c['synthesized']} samples (100.0%)" in lines[-1]


def test_without_a_terminal_ray_datas_detail_goes_to_a_log_file(finished_run):
    """A run whose output is captured (no terminal, as `ray job logs` shows it) prints the factory's
    own lines; Ray Data's operator progress lands in OUTPUT/logs/ray-data.log."""
    out, proc = finished_run
    console = proc.stdout + proc.stderr
    assert "Running Dataset" not in console and "logging_progress" not in console
    assert not [ln for ln in console.splitlines() if "(MapWorker(" in ln and " pid=" in ln]  # workers' own output
    assert "Registered dataset logger" in (out / "logs" / "ray-data.log").read_text()  # Ray Data's own lines
    m = json.loads((out / "manifest.json").read_text())
    assert m["ray_data_log"] == str(out / "logs" / "ray-data.log")
    factory_lines = [ln for ln in proc.stdout.splitlines() if "[factory]" in ln or "progress: " in ln]
    assert len(console.splitlines()) < len(factory_lines) + 30, console[-3000:]


def test_ray_datas_log_file_is_the_runs_own_and_the_logger_is_left_as_found(tmp_path):
    """Two runs in one process (a notebook; the tests' factory_run): each run's ray-data.log holds
    its own lines only, and Ray Data's logger is as it was once a run ends."""
    import logging

    from factory.engine.logs import RAY_DATA_LOGGER, ray_data_to_file

    logger = logging.getLogger(RAY_DATA_LOGGER)
    before = (logger.handlers[:], logger.propagate)
    for name in ("a", "b"):
        with ray_data_to_file(str(tmp_path / name)) as path:
            assert path == str(tmp_path / name / "logs" / "ray-data.log") and logger.propagate is False
            logger.warning("line of run %s", name)
    assert (logger.handlers, logger.propagate) == before
    assert "line of run a" in (tmp_path / "a" / "logs" / "ray-data.log").read_text()
    assert "line of run a" not in (tmp_path / "b" / "logs" / "ray-data.log").read_text()
    assert "line of run b" in (tmp_path / "b" / "logs" / "ray-data.log").read_text()


def test_candidates_and_dataset_read_back(finished_run):
    out, _ = finished_run
    cands = pads.dataset(out / "candidates").to_table()
    assert cands.schema.names == S.CANDIDATES.names
    keys = list(zip(cands.column(S.ID).to_pylist(), cands.column(S.SAMPLE).to_pylist()))
    assert len(keys) == len(set(keys))
    data = pads.dataset(out / "dataset").to_table().sort_by(S.RANK)
    assert data.schema.names == S.DATASET.names
    assert data.column(S.RANK).to_pylist() == [1, 2, 3, 4, 5]
    # the selected pairs are the top 5 of the best-of-2 per caption, by a plain sort here
    usable = cands.filter(pads.field(S.REASON).is_null()).sort_by([(S.SCORE, "descending"), (S.SAMPLE, "ascending")]).to_pylist()
    best = {}
    for r in usable:
        best.setdefault(r[S.ID], r)
    top = sorted(best.values(), key=lambda r: (-r[S.SCORE], r[S.ID]))[:5]
    assert [(r[S.ID], r[S.SAMPLE]) for r in top] == list(zip(data.column(S.ID).to_pylist(), data.column(S.SAMPLE).to_pylist()))
    # long captions are kept whole
    assert any(len(c) > 600 for c in cands.column(S.CAPTION).to_pylist())
    # images decode as the size recorded
    from factory.io.write import decode_image

    img = decode_image(data.column(S.IMAGE)[0].as_py())
    assert img.shape == (data.column(S.HEIGHT)[0].as_py(), data.column(S.WIDTH)[0].as_py(), 3)


def test_rejects_keep_raw_rows_and_reasons(finished_run):
    out, _ = finished_run
    rej = pads.dataset(out / "rejects").to_table().to_pylist()
    by_reason = {r[S.REASON]: r for r in rej}
    assert by_reason[S.R_MALFORMED][S.RAW] == "{broken json"
    assert by_reason[S.R_DUP_ID][S.ID] == "1" and "duplicate of id 1" == by_reason[S.R_DUP_ID][S.DETAIL]
    assert by_reason[S.R_DUP_CAPTION][S.ID] == "102"


def test_huggingface_datasets_reads_both_folders(finished_run):
    import datasets

    out, _ = finished_run
    for name, n in (("candidates", None), ("dataset", 5)):
        ds = datasets.load_dataset("parquet", data_dir=str(out / name), split="train")
        assert S.IMAGE in ds.column_names
        if n:
            assert len(ds) == n


def test_every_parquet_file_opens(finished_run):
    out, _ = finished_run
    for path in out.rglob("*.parquet"):
        assert pq.ParquetFile(path).metadata.num_rows >= 0
    assert not [p for p in out.rglob(".*.tmp")]


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_missing_input_is_one_line(tmp_path, capsys):
    proc = factory_main(capsys, f"input={tmp_path}/nope*.jsonl", f"output={tmp_path}/o")
    assert proc.returncode == 2
    assert error_lines(proc) == [f"error: input not found: no file matches '{tmp_path}/nope*.jsonl'"]
    assert "Traceback" not in proc.stderr


def test_bad_settings_and_unusable_output_are_one_line_before_anything_runs(tmp_path, capsys):
    """Settings that would only fail after generation, and an output folder that cannot be made."""
    write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "caption": CAPTIONS[0]}])
    for bad, words in (("select.fraction=10", "select.fraction must be in (0, 1]"), ("select.k=-1", "select.k must be ≥ 0"),
                       ("select.k=many", "select.k=many Value 'many' of type 'str' could not be converted to Integer"),
                       ("curate.dedup.ids=false", "ids must be unique")):
        proc = factory_main(capsys, f"input={tmp_path}/c.jsonl", f"output={tmp_path}/o", bad)
        assert proc.returncode == 2 and len(error_lines(proc)) == 1 and words in error_lines(proc)[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()  # refused before the output was touched
    (tmp_path / "a-file").write_text("")
    proc = factory_main(capsys, f"input={tmp_path}/c.jsonl", f"output={tmp_path}/a-file/o")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1 and "a-file" in error_lines(proc)[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_unknown_format_and_broken_file(tmp_path, capsys, ray_local):
    (tmp_path / "c.xml").write_text("<x/>")
    proc = factory_main(capsys, f"input={tmp_path}/c.xml", f"output={tmp_path}/o")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1 and "unknown input format" in error_lines(proc)[0]
    (tmp_path / "c.json").write_text("[{broken")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    proc = factory_run(f"input={tmp_path}/c.json", f"output={tmp_path}/o2", "ray.progress_bars=false")
    assert proc.returncode == 2 and error_lines(proc) == [f"error: {tmp_path}/c.json:1: not valid JSON (Expecting property name enclosed in double quotes); use .jsonl for one object a line"]
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())  # not left saying "running"
    assert m["status"] == "failed" and m["error"].startswith("InputError: ") and "c.json:1: not valid JSON" in m["error"]
    proc = factory_run(f"input={tmp_path}/empty.jsonl", f"output={tmp_path}/o3", "ray.progress_bars=false")
    assert proc.returncode == 2 and "input is empty" in error_lines(proc)[0]


def test_multi_node_run_refuses_paths_a_node_does_not_see(tmp_path, monkeypatch):
    """The check runs before output= changes; it names the folder and the nodes, and leaves no probe file."""
    from factory.engine import ray_setup
    from factory.errors import RunError
    from factory.run import check_paths_shared

    seen = {}

    def two_nodes_one_blind(paths):
        seen["paths"] = list(paths)
        assert all(os.path.exists(p) for p in paths)  # the probe file is there while nodes look
        return 2, {paths[-1]: ["10.0.0.7"]}

    monkeypatch.setattr(ray_setup, "nodes_without", two_nodes_one_blind)
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"id": 1, "caption": "a red car on a street"}\n')
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RunError, match=r"output=.*out is a local folder that 1 of 2 Ray nodes do not see \(10\.0\.0\.7\)"):
        check_paths_shared(str(out), [str(captions)])
    assert seen["paths"][0] == str(captions) and list(out.iterdir()) == []

    monkeypatch.setattr(ray_setup, "nodes_without", lambda paths: (3, {paths[0]: ["10.0.0.8"]}))
    with pytest.raises(RunError, match=r"input .*c\.jsonl is a local file that 1 of 3 Ray nodes"):
        check_paths_shared("s3://bucket/run", [str(captions)])
    monkeypatch.setattr(ray_setup, "nodes_without", lambda paths: pytest.fail("nothing local to check"))
    assert check_paths_shared("s3://bucket/run", ["s3://bucket/captions.jsonl"]) == 0


@pytest.mark.parametrize("bad, words", [
    ("synth.repeat=0", "synth.repeat must be a whole number ≥ 1, got 0"),
    ("synth.steps=0", "synth.steps must be a whole number ≥ 1"),
    ("score.batch_size=0", "score.batch_size must be a whole number ≥ 1, got 0"),
    ("model.batch_size=0", "synth.batch_size must be a whole number ≥ 1, got 0"),
    ("resources.synth.actors=0", "resources.synth.actors must be a whole number ≥ 1, got 0"),
    ("image.format=gif", "image.format='gif': expected one of"),
    ("image.quality=0", "image.quality must be a whole number in [1, 100], got 0"),
    ("curate.llm.backend=sglang", "curate.llm.backend='sglang': expected hf or vllm"),
    ("score.lam=-1", "score.lam must be a number ≥ 0, got -1"),
    ("score.lam=inf", "score.lam must be a number ≥ 0, got inf"),
    ("model.height=100", "model.height must be a multiple of 8 (sdxl's VAE scale × patch size), got 100"),
    ("scorer.chunk_size=0", "scorer.chunk_size must be a whole number ≥ 1 or null, got 0"),
    ("resources.score.num_gpus=-0.25", "resources.score.num_gpus must be a number ≥ 0 or null, got -0.25"),
    ("model.tiny_refiner=true model.high_noise_frac=1.2", "model.high_noise_frac must be a number between 0 and 1 with a refiner, got 1.2"),
    ("+resources.synht.actors=2", "resources.synht: no stage of this config has an actor pool of that name"),
    ("curate.near_dup.bands=5", "curate.near_dup.bands=5 must divide curate.near_dup.num_perm=128"),
])
def test_settings_that_would_fail_mid_run_are_refused_first(bad, words):
    """Ranges: the settings' and the stages' own checks, when the job is loaded (before Ray starts)."""
    from factory.config import compose
    from factory.job import load_job

    with pytest.raises(ValueError) as err:
        load_job(compose(bad.split()))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad, words", [
    ("synth.repeat=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("resources.judge.max_actors=two", "Value 'two' of type 'str' could not be converted to Integer"),
    ("score.lam=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("synth.guidance=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("progress_every_s=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ("synth.seed=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
    ("curate.rules.alnum_min=high", "Value 'high' of type 'str' could not be converted to Float"),
    ("model.stepz=3", "Key 'stepz' not in 'TinySDXLConfig'"),
])
def test_a_wrong_type_or_key_is_refused_when_composing_in_omegaconfs_words(bad, words):
    from factory.config import check_overrides

    error = check_overrides(bad.split())
    assert error is not None and words in error and bad.split("=")[0] in error and "\n" not in error


@pytest.mark.parametrize("recipe", [[], ["+experiment=synthvlm"], ["+experiment=fast"], ["image.format=webp", "image.quality=80"],
                                    ["cluster=gpu", "model=sdxl", "scorer=clip_l14_336"], ["resources.synth.max_actors=4"]])
def test_the_shipped_settings_pass_the_checks(recipe):
    from factory.config import compose
    from factory.job import load_job

    load_job(compose(recipe))


def test_a_stage_that_cannot_start_in_ray_is_one_line_naming_it(ray_local):
    """Ray Data wraps a constructor's error in ActorDiedError with the remote traceback as coloured text."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from factory.errors import error_line, user_error
    from tests.crash_helpers import StageThatCannotLoad  # importable by Ray's workers

    ds = ray.data.range(4).map_batches(StageThatCannotLoad, compute=ActorPoolStrategy(size=1),
                                       fn_constructor_kwargs={"path": "/no/such/model"})
    with pytest.raises(Exception) as err:
        ds.materialize()
    assert user_error(err.value) == "StageThatCannotLoad could not start: ValueError: no model at /no/such/model"
    assert "\x1b" not in error_line(err.value) and "\n" not in error_line(err.value)


@pytest.mark.parametrize("bad, words", [
    ("select.kk=3", "Could not override 'select.kk'. Key 'kk' not in 'SelectSettings'"),
    ("model=nope", "Could not find 'model/nope' Available options in 'model': flux_dev flux_schnell"),
])
def test_a_bad_override_is_one_line_from_hydra_itself(tmp_path, capsys, bad, words):
    proc = factory_main(capsys, bad, f"output={tmp_path}/o")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {error_lines(proc)[0][len('error: '):]}"]
    assert words in proc.stderr and not (tmp_path / "o").exists()
    proc = factory_main(capsys, "--cfg", "job", bad)  # the config printout refuses it alike
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, refused", [
    ("+select.kk=3", "select has no 'kk'"),
    ("++synth.stepz=3", "synth has no 'stepz'"),
    ("+model.compile_opts.mode=max", "model has no 'compile_opts'"),
    ("+foo=1", "the top level has no 'foo'"),
    ("+experiment=fast", None),  # a config group, not a key
    ("++select.k=3", None),  # overrides a key that exists
    ("+curate.llm.engine_kwargs.enable_prefix_caching=true", None),  # an open map: the engine's own arguments
])
def test_added_keys_must_be_keys_the_code_reads(override, refused):
    from factory.config import check_overrides

    error = check_overrides([override, "model=sdxl"])
    if refused is None:
        assert error is None
    else:
        assert refused in error and error.startswith(f"'{override}' adds a key that nothing reads")


def test_a_number_that_is_no_number_is_one_line_before_ray_starts(tmp_path):
    """score.lam=abc used to fail at the first scored batch, as a remote traceback, after the models loaded."""
    proc = run_cli("score.lam=abc", f"output={tmp_path}/o")
    assert proc.returncode == 2 and not (tmp_path / "o").exists()
    assert proc.stderr.strip().splitlines() == ["error: Error merging override score.lam=abc Value 'abc' of type 'str' could not "
                                                "be converted to Float (python -m factory --cfg job prints every key)"]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_an_added_typo_is_one_line_before_anything_runs(tmp_path, capsys):
    proc = factory_main(capsys, "+select.kk=3", f"output={tmp_path}/o")
    assert proc.returncode == 2 and not (tmp_path / "o").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: '+select.kk=3' adds a key that nothing reads: select has no 'kk' (its keys: best_by, fraction, k) "
        "(python -m factory --cfg job prints every key)"]


def test_pyarrow_errors_keep_their_traceback_and_settings_errors_are_one_line():
    """A ValueError about a setting is the user's to fix; pyarrow's own ArrowInvalid (a ValueError too)
    means a bug here, and the CLI lets its traceback through."""
    import pyarrow as pa

    from factory.errors import user_error
    from factory.select import check_best_by

    with pytest.raises(pa.ArrowInvalid) as arrow:
        pa.array(["x"]).cast(pa.int64())
    assert isinstance(arrow.value, ValueError) and user_error(arrow.value) is None
    with pytest.raises(ValueError) as setting:
        check_best_by("ssim")
    assert user_error(setting.value) == "select.best_by='ssim': expected one of score, clip_score"
    from factory.io.read import list_inputs

    for uri, words in (("s3a://bucket/x.jsonl", "Unrecognized filesystem type"), ("s3://bucket/x?bogus=1", "Unexpected query parameter")):
        with pytest.raises(ValueError) as typo:  # pyarrow's ArrowInvalid about a URI: the user's typo, one line
            list_inputs(uri)
        assert user_error(typo.value).startswith(f"{uri}: ") and words in user_error(typo.value)
