"""The device check's scripts (benchmarks/device/) stay runnable without a device: factory_gpu.sh
runs its every step with the tiny models, and the wheel check catches what would break the install."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from packaging.utils import canonicalize_name

from benchmarks.device import check_wheels

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "benchmarks" / "device"
RATE = re.compile(r": ([0-9.]+) images/s")


def test_factory_gpu_cpu_runs_every_step_and_prints_the_ratio_last(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "FACTORY_GPU_WORK": str(work), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script sets it: the repo root first
    res = subprocess.run(["bash", str(DEVICE / "factory_gpu.sh"), "--cpu"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[-2] == "ratio end-to-end steady / synthesis stage alone:"
    ratio = float(lines[-1])
    device = next(ln for ln in lines if ln.startswith("device: "))
    assert device.startswith("device: CPU")
    phase, steady, alone = (float(RATE.search(ln).group(1)) for ln in lines if RATE.search(ln))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    counts, wall = manifest["counts"], manifest["wall_seconds"]
    assert counts["curated"] == counts["generated"] == 8
    synth = next(s for s in manifest["stages"] if s["stage"] == "synthesize")
    assert phase == pytest.approx(counts["generated"] / wall["generate"], abs=1e-3)
    assert steady == pytest.approx(synth["rows_per_s"], abs=1e-3)
    assert synth["wall_s"] < wall["generate"]  # the steady span leaves the actors' start-up out
    stage = json.loads((out / "stage.json").read_text())
    assert stage["images"] == 8 and alone == pytest.approx(stage["images_per_s"], abs=1e-3)
    assert ratio == pytest.approx(synth["rows_per_s"] / stage["images_per_s"], abs=2e-3)
    # The run went through the real CLI and the models the script saved: pyarrow reads its candidates back.
    assert manifest["config"]["model"]["path"] == str(work / "model")
    assert manifest["config"]["scorer"]["pretrained"] == str(work / "clip" / "open_clip_model.safetensors")
    assert pads.dataset(str(work / "run" / "candidates"), format="parquet").count_rows() == 8
    for log in ("prepare.log", "factory.log", "stage.log", "summary.txt"):
        assert (out / log).stat().st_size > 0, log
    assert (out / "summary.txt").read_text().strip().splitlines()[-1] == lines[-1]


def test_factory_gpu_names_the_failed_step_in_its_last_line(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "FACTORY_GPU_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "FACTORY_GPU_DEADLINE_S": "0"}
    res = subprocess.run(["bash", str(DEVICE / "factory_gpu.sh"), "--cpu"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stdout.strip().splitlines()[-1].startswith("factory_gpu: FAILED at 'prepare models and captions'")


def make_wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}\n".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def run_check(tmp_path: Path, pins: str, wheels: list[Path]) -> list[str]:
    (tmp_path / "list.txt").write_text(pins)
    (tmp_path / "image.txt").write_text("numpy==2.5.2\nrequests\n")
    pinned, problems = check_wheels.read_list(tmp_path / "list.txt")
    return problems + check_wheels.check_wheels(wheels, pinned, check_wheels.read_image(tmp_path / "image.txt"))


def test_check_wheels_passes_a_complete_set(tmp_path):
    wheels = [make_wheel(tmp_path, "alpha", "1.0", ["numpy>=2", "beta", "requests", 'oldlib; python_version < "3.8"', "gamma; extra == 'x'"]),
              make_wheel(tmp_path, "beta", "0.3", [], "cp312-cp312-manylinux_2_17_x86_64")]
    assert run_check(tmp_path, "alpha==1.0\nbeta==0.3  # a comment\n", wheels) == []


@pytest.mark.parametrize("pins, wheel, expected", [
    ("alpha==1.0\n", ("alpha", "1.0", ["delta"]), "alpha-1.0-py3-none-any.whl needs delta: neither carried nor in the image"),
    ("alpha==1.0\n", ("alpha", "1.0", ["numpy<2"]), "needs numpy<2: the image has 2.5.2"),
    ("alpha==1.0\n", ("alpha", "1.0", [], "cp311-cp311-manylinux_2_17_x86_64"), "no tag installable on CPython 3.12"),
    ("alpha==1.0\n", ("alpha", "1.0", [], "cp312-cp312-macosx_11_0_arm64"), "no tag installable on CPython 3.12"),
    ("torch==2.11.0\n", ("torch", "2.11.0", []), "torch must not be carried"),
    ("alpha==1.1\n", ("alpha", "1.0", []), "alpha==1.1 is listed but no such wheel is packed"),
    ("alpha>=1.0\n", ("alpha", "1.0", []), "is not pinned as name==version"),
    ("alpha==1.0\nAlpha==1.0\n", ("alpha", "1.0", []), "Alpha is listed twice"),
])
def test_check_wheels_names_what_would_break(tmp_path, pins, wheel, expected):
    problems = run_check(tmp_path, pins, [make_wheel(tmp_path, *wheel)])
    assert any(expected in p for p in problems), problems


def test_the_shipped_list_and_pack_dry_run(tmp_path):
    pins, problems = check_wheels.read_list(DEVICE / "wheels.txt")
    assert problems == [] and "diffusers" in pins and "jsonschema" in pins
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_PACK_CACHE": str(tmp_path / "cache"),
           "DEVICE_PACK_DIR": str(tmp_path / "pack")}
    res = subprocess.run(["bash", str(DEVICE / "pack.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    planned = {canonicalize_name(m[1]): (m[2], m[3]) for m in re.finditer(r"^([\w.-]+)==(\S+): (.*)$", res.stdout, re.M)}
    # every pin, at its version, to be fetched into an empty cache; and Ray
    assert planned == {**{n: (v, "to fetch (sdist)" if n.startswith("antlr4") else "to fetch (wheel)") for n, v in pins.items()},
                       "ray": ("2.60.0", "to fetch and build, slimmed: without ray/jars ray/rllib ray/serve ray/tune")}
    assert not (tmp_path / "pack").exists() and not (tmp_path / "cache").exists()  # a dry run writes nothing


def pure_wheel(folder: Path) -> Path:
    """A one-module wheel that pip installs (WHEEL and RECORD present)."""
    path = folder / "devcheck-0.1-py3-none-any.whl"
    info = "devcheck-0.1.dist-info"
    files = {"devcheck.py": "VALUE = 42\n", f"{info}/METADATA": "Metadata-Version: 2.1\nName: devcheck\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return path


def test_install_puts_wheels_and_ray_tarball_in_site_once(tmp_path):
    """install.sh's pip and tar steps and its import check, on a stand-in pack."""
    (tmp_path / ".device" / "wheels").mkdir(parents=True)
    pure_wheel(tmp_path / ".device" / "wheels")
    (tmp_path / "marker.txt").write_text("slim")
    subprocess.run(["tar", "-cJf", ".device/ray-2.60.0-slim.tar.xz", "marker.txt"], cwd=tmp_path, check=True)
    site = tmp_path / "site"
    cmd = ["bash", str(DEVICE / "install.sh"), str(site), sys.executable, "devcheck"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (site / "devcheck.py").read_text() == "VALUE = 42\n" and (site / "marker.txt").read_text() == "slim"
    assert f"devcheck - {site / 'devcheck.py'}" in res.stdout.splitlines(), res.stdout  # imported from SITE
    (tmp_path / ".device" / "wheels" / "devcheck-0.1-py3-none-any.whl").unlink()  # a second call installs nothing
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (site / "devcheck.py").exists(), res.stdout + res.stderr
