"""Resuming is refused across a change of what a sample is, per key, and an output written by an
older factory (a manifest that stores groups whole and lacks keys added since) still resumes."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.config import compose
from factory.run import RunError, check_resume, fingerprint, run_dirs


def write_manifest(output, fp: dict, samples: bool = True) -> dict:
    """A run's manifest, and with `samples` one candidates file (what makes its settings binding)."""
    dirs = run_dirs(str(output))
    output.mkdir(parents=True, exist_ok=True)
    (output / "manifest.json").write_text(json.dumps({"status": "complete", "fingerprint": fp}))
    if samples:
        (output / "candidates").mkdir(exist_ok=True)
        pq.write_table(pa.table({S.ID: ["a"], S.SAMPLE: pa.array([0], pa.int32())}), output / "candidates" / "part-0.parquet")
    return dirs


def older_fingerprint(cfg: dict) -> dict:
    """As the first release wrote it: model and scorer whole, before model.vae_tiling existed."""
    fp = json.loads(json.dumps(fingerprint(cfg)))  # through JSON, as a manifest holds it
    del fp["model"]["vae_tiling"]
    return fp


def test_an_older_manifest_resumes_at_the_implied_value_of_a_key_added_since(tmp_path):
    cfg = compose([f"output={tmp_path / 'out'}"])
    dirs = write_manifest(tmp_path / "out", older_fingerprint(cfg))
    assert check_resume(cfg, dirs)["status"] == "complete"

    tiled = compose([f"output={tmp_path / 'out'}", "model.vae_tiling=true"])
    with pytest.raises(RunError, match=r"other settings \(model\.vae_tiling\)"):
        check_resume(tiled, dirs)


def test_a_changed_setting_is_named_by_its_own_key_and_speed_settings_are_free(tmp_path):
    cfg = compose([f"output={tmp_path / 'out'}"])
    dirs = write_manifest(tmp_path / "out", json.loads(json.dumps(fingerprint(cfg))))
    for free in ("model.compile=true", "model.batch_size=3", "scorer.chunk_size=4", "model.attention_backend=math"):
        assert check_resume(compose([f"output={tmp_path / 'out'}", free]), dirs) is not None, free
    # synth.guidance follows model.guidance (conf/config.yaml), so both differ
    changed = compose([f"output={tmp_path / 'out'}", "model.guidance=3.0", "scorer.dtype=float16", "synth.seed=2"])
    with pytest.raises(RunError, match=r"other settings \(model\.guidance, scorer\.dtype, synth\.guidance, synth\.seed\)"):
        check_resume(changed, dirs)
    allowed = compose([f"output={tmp_path / 'out'}", "model.guidance=3.0", "resume.allow_config_change=true"])
    assert check_resume(allowed, dirs) is not None


def test_a_key_the_older_run_lacks_without_an_implied_value_is_refused(tmp_path):
    cfg = compose([f"output={tmp_path / 'out'}"])
    fp = older_fingerprint(cfg)
    del fp["model"]["high_noise_frac"]  # no entry in IMPLIED_BEFORE: what the old run used is unknown
    dirs = write_manifest(tmp_path / "out", fp)
    with pytest.raises(RunError, match=r"other settings \(model\.high_noise_frac\)"):
        check_resume(cfg, dirs)


# The fingerprinted model and scorer keys of the first release (git show 49d9ee3:conf/model/tiny.yaml,
# conf/scorer/tiny.yaml): outputs made then have exactly these.
FIRST_RELEASE = {f"model.{k}" for k in ("name", "path", "refiner_path", "high_noise_frac", "dtype", "variant", "height",
                                        "width", "steps", "guidance")} | {f"scorer.{k}" for k in ("name", "arch", "pretrained", "dtype")}


@pytest.mark.parametrize("group", ["model=tiny", "model=sdxl", "scorer=tiny", "scorer=clip_b32", "scorer=clip_l14_336"])
def test_every_fingerprinted_key_added_since_the_first_release_has_an_implied_value(group):
    from factory.run import IMPLIED_BEFORE, leaves

    name = group.split("=")[0]
    keys = {k for k in leaves(fingerprint(compose([group]))) if k.startswith(name + ".")}
    assert keys - FIRST_RELEASE - set(IMPLIED_BEFORE) == set(), "add the new key to NOT_FINGERPRINTED or IMPLIED_BEFORE"


def test_a_run_that_stopped_before_its_first_sample_binds_its_output_to_nothing(tmp_path):
    """A bad model path fails the run before any candidate: the corrected command must go on."""
    cfg = compose([f"output={tmp_path / 'out'}"])
    other = json.loads(json.dumps(fingerprint(compose(["model.path=/no/such/model"]))))
    dirs = write_manifest(tmp_path / "out", other, samples=False)
    assert check_resume(cfg, dirs)["status"] == "complete"
    dirs = write_manifest(tmp_path / "out", other, samples=True)
    with pytest.raises(RunError, match=r"other settings \(model\.path\)"):
        check_resume(cfg, dirs)


@pytest.mark.parametrize("text, words", [("{broken", "is not valid JSON"), ("[]", "is not a manifest of this factory")])
def test_a_broken_manifest_is_one_line_naming_it(tmp_path, text, words):
    cfg = compose([f"output={tmp_path}"])
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(RunError) as err:
        check_resume(cfg, run_dirs(str(tmp_path)))
    assert words in str(err.value) and str(tmp_path / "manifest.json") in str(err.value)
