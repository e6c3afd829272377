"""The resume fingerprint is derived from the stages' parameters: resuming is refused across a
change of what a sample is, per key, speed settings are free, a parameter added to a stage joins
the fingerprint by itself, and an output written before the stage contract still resumes."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.config import compose
from factory.errors import RunError
from factory.job import load_job
from factory.layout import check_resume, run_dirs
from factory.pipeline import Slot
from factory.synth.tiny import TinySDXL
from tests.conftest import factory_run

ROOT = Path(__file__).resolve().parent.parent
V1 = ROOT / "tests" / "fixtures" / "v1"  # an output the factory made before the stage contract (commit 56f0e6d)
V1_ARGS = ["synth.steps=1", "synth.repeat=2", "select.k=3", "score.ssim_size=64", "score.ssim_low=32", "ray.progress_bars=false",
           "report.enabled=false"]


def pipeline(*overrides):
    return load_job(compose(list(overrides))).pipeline


def write_manifest(output, fp: dict, samples: bool = True, version: int = 2) -> dict:
    """A run's manifest, and with `samples` one candidates file (what makes its settings binding)."""
    dirs = run_dirs(str(output))
    output.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").write_text(json.dumps({"status": "complete", "fingerprint": fp, "fingerprint_version": version}))
    if samples:
        (output / "candidates").mkdir(exist_ok=True)
        pq.write_table(pa.table({S.ID: ["a"], S.SAMPLE: pa.array([0], pa.int32())}), output / "candidates" / "part-0.parquet")
    return dirs


def resume(p, dirs, allow=False):
    return check_resume(p, dirs, "out", allow)


def test_a_changed_setting_is_named_by_its_own_key_and_speed_settings_are_free(tmp_path):
    dirs = write_manifest(tmp_path / "out", json.loads(json.dumps(pipeline().fingerprint())))
    for free in ("model.compile=true", "model.batch_size=3", "scorer.chunk_size=4", "model.attention_backend=math",
                 "score.batch_size=4", "synth.repeat=3", "resources.synth.actors=2"):
        assert resume(pipeline(free), dirs) is not None, free
    # a generator's settings are named by the key that sets them (model.*, one generator; generators.<name>.*, several)
    with pytest.raises(RunError, match=r"other settings \(model\.guidance, scorer\.dtype, synth\.seed\)"):
        resume(pipeline("model.guidance=3.0", "scorer.dtype=float16", "synth.seed=2"), dirs)
    assert resume(pipeline("model.guidance=3.0"), dirs, allow=True) is not None


def test_the_fingerprint_is_every_sample_making_parameter_but_the_speed_only_ones():
    p = pipeline()
    fp = p.fingerprint()
    for s in p.sample_slots():
        fields = {f.name for f in dataclasses.fields(s.stage)}
        assert {s.key(f) for f in fields - s.stage.speed_only} <= set(fp)
        assert not {s.key(f) for f in s.stage.speed_only & fields if s.prefix or f in s.keys} & set(fp)
    assert fp["generators.tiny.steps"] == 4 and fp["generators.tiny.path"] is None and fp["image.format"] == "png"


def test_a_parameter_added_to_a_stage_joins_the_fingerprint_and_older_outputs_resume_at_its_default(tmp_path):
    @dataclasses.dataclass
    class Sharper(TinySDXL):
        sharpness: float = 0.0  # a new parameter: 0 does what the class did without it

    p = pipeline()
    old = json.loads(json.dumps(p.fingerprint()))
    stage = Sharper(**{f.name: getattr(p.generator.stage, f.name) for f in dataclasses.fields(TinySDXL)})
    p.generators = [Slot(stage, {**p.generator.keys, "sharpness": "model.sharpness"}, p.generator.prefix)]
    assert p.fingerprint()["generators.tiny.sharpness"] == 0.0
    dirs = write_manifest(tmp_path / "out", old)
    assert resume(p, dirs) is not None  # the older run lacks the key: counted at the default
    p.generators = [Slot(dataclasses.replace(stage, sharpness=0.5), p.generator.keys, p.generator.prefix)]
    with pytest.raises(RunError, match=r"other settings \(model\.sharpness\)"):
        resume(p, dirs)


def test_a_run_that_stopped_before_its_first_sample_binds_its_output_to_nothing(tmp_path):
    """A bad model path fails the run before any candidate: the corrected command must go on."""
    other = json.loads(json.dumps(pipeline("model.path=/no/such/model").fingerprint()))
    dirs = write_manifest(tmp_path / "out", other, samples=False)
    assert resume(pipeline(), dirs)["status"] == "complete"
    dirs = write_manifest(tmp_path / "out", other, samples=True)
    with pytest.raises(RunError, match=r"other settings \(model\.path\)"):
        resume(pipeline(), dirs)


@pytest.mark.parametrize("text, words", [("{broken", "is not valid JSON"), ("[]", "is not a manifest of this factory")])
def test_a_broken_manifest_is_one_line_naming_it(tmp_path, text, words):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(RunError) as err:
        resume(pipeline(), run_dirs(str(tmp_path)))
    assert words in str(err.value) and str(tmp_path / "manifest.json") in str(err.value)


def test_the_version_1_fingerprint_is_read_in_todays_keys_and_values(tmp_path):
    v1 = json.loads((V1 / "output" / "manifest.json").read_text())["fingerprint"]
    assert v1["model"]["path"] == "tiny" and v1["scorer"]["arch"] == "tiny"  # as the old factory wrote it
    dirs = write_manifest(tmp_path / "out", v1, version=1)
    assert resume(pipeline(*V1_ARGS), dirs) is not None
    with pytest.raises(RunError, match=r"other settings \(model\.vae_tiling\)"):
        resume(pipeline(*V1_ARGS, "model.vae_tiling=true"), dirs)
    refined = dict(v1, model=dict(v1["model"], refiner_path="tiny"))  # model.refiner_path=tiny is model.tiny_refiner=true now
    dirs = write_manifest(tmp_path / "out", refined, version=1)
    assert resume(pipeline(*V1_ARGS, "model.tiny_refiner=true"), dirs) is not None


def test_an_output_made_before_the_stage_contract_resumes_through_the_cli(tmp_path, ray_local):
    """The output the old factory made (tests/fixtures/v1/output) resumes: nothing is generated again,
    the dataset is the same; a higher synth.repeat generates only the new samples."""
    out = tmp_path / "out"
    shutil.copytree(V1 / "output", out)
    before = pq.read_table(next((V1 / "output" / "dataset").glob("*.parquet"))).sort_by("rank")
    cmd = [f"input={V1 / 'captions.jsonl'}", f"output={out}", *V1_ARGS]
    proc = factory_run(*cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["generated"] == 0 and counts["resumed"] == 10
    after = pq.read_table(next((out / "dataset").glob("*.parquet"))).sort_by("rank")
    for c in (S.ID, S.SAMPLE, S.SEED, S.RANK, S.SCORE, S.IMAGE):
        assert after.column(c).to_pylist() == before.column(c).to_pylist(), c
    proc = factory_run(*cmd[:-len(V1_ARGS)], *[a for a in V1_ARGS if a != "synth.repeat=2"], "synth.repeat=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["counts"]["generated"] == 5  # five captions, one more sample each
