"""`ray job submit` against a two-node cluster started with Ray's own CLI on this machine.

Only the processes this module starts are stopped (by process group and descendants), never with
`ray stop`, which would stop every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from factory import schema as S
from factory.engine.ray_setup import is_local_ray
from factory.settings import RaySettings
from tests.crash_helpers import ROOT, descendants, group_members, kill_pids

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    """n distinct free ports from 20000–29999: below the kernel's ephemeral range (where Ray's own
    processes bind random ports and where a port just released may be handed out again) and above
    Ray's worker ports (10002–19999). Each is held until all are found, so none repeats."""
    import random

    held: list[socket.socket] = []
    try:
        for port in random.sample(range(20000, 30000), 200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [h.getsockname()[1] for h in held]
        raise RuntimeError(f"no {n} free ports in 20000-29999")
    finally:
        for h in held:
            h.close()


def ray_cli(*args: str, env: dict, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU, dashboard + job server) and a worker (2 CPUs), in their own temp dir."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    gcs, dash, client, agent_head, agent_worker = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Token auth as Ray 2.60 enables it for a new cluster; said explicitly so that the worker node
    # and the job CLI use the same token (~/.ray/auth_token) instead of joining without one.
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", FACTORY_CACHE=os.environ["FACTORY_CACHE"], TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)  # the job must import the uploaded working dir, not this checkout
    # As with an activated venv: the job's `python` is the cluster's (this venv's) python.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    started: list[subprocess.Popen] = []

    def start(*args: str) -> None:
        p = subprocess.Popen([RAY, "start", *args, "--disable-usage-stats"], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(p)
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-3000:]

    try:
        start("--head", "--num-cpus=1", "--num-gpus=0", f"--port={gcs}", "--include-dashboard=true",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
              f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_head}")
        start(f"--address=127.0.0.1:{gcs}", "--num-cpus=2", "--num-gpus=0",
              f"--dashboard-agent-listen-port={agent_worker}")
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "temp": temp}
    finally:
        # Everything the two `ray start` left running: their process groups and what those spawned.
        pids = set()
        for p in started:
            members = group_members(p.pid)
            pids.update(members)
            for m in members:
                pids.update(descendants(m))
        left = kill_pids(sorted(pids))
        assert not left, f"could not stop {left}"
        shutil.rmtree(temp, ignore_errors=True)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def submit(cluster: dict, *overrides: str, tag: str) -> tuple[str | None, str]:
    """`ray job submit` of `python -m factory ...` with the repo as working dir, waiting for its end.

    Returns the job's final status as the CLI reports it, and everything it printed (the job's logs).
    """
    job_id = f"factory-{tag}-{uuid.uuid4().hex[:6]}"
    runtime_env = {"env_vars": {"FACTORY_CACHE": os.environ["FACTORY_CACHE"]}}
    r = ray_cli("job", "submit", "--address", cluster["address"], "--submission-id", job_id,
                "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
                "python", "-m", "factory", *overrides, env=cluster["env"], cwd=cluster["temp"], timeout=480)
    text = ANSI.sub("", r.stdout + r.stderr)
    ends = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}
    m = re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", text)
    return (ends[m.group(1)] if m else None), text


def test_ray_job_submit_runs_the_factory(cluster, tmp_path, captions_file):
    out = tmp_path / "job-out"
    status, logs = submit(cluster, f"input={captions_file}", f"output={out}", "ray.progress_bars=false",
                          "synth.steps=2", "score.ssim_size=64", "score.ssim_low=32", "select.k=5", tag="ok")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "selected 5" in logs

    dataset = pads.dataset(out / "dataset", format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 5
    assert table.schema.equals(S.DATASET)
    assert sorted(table.column(S.RANK).to_pylist()) == [1, 2, 3, 4, 5]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["output"] == str(out)
    # Nothing landed in the job's temporary package folder or where the CLI was called.
    assert not (Path(cluster["temp"]) / "dataset").exists()
    assert not list(Path(cluster["temp"]).glob("session_*/runtime_resources/working_dir_files/*/runs"))
    # The uploaded package left out what .rayignore names.
    pkgs = {p.resolve() for p in Path(cluster["temp"]).glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()}
    assert pkgs
    for pkg in pkgs:
        assert (pkg / "factory" / "__main__.py").exists() and (pkg / "conf" / "config.yaml").exists()
        assert not (pkg / ".git").exists() and not (pkg / ".venv").exists() and not list(pkg.rglob("__pycache__"))


def test_a_relative_output_is_refused_in_a_job(cluster, captions_file):
    status, logs = submit(cluster, f"input={captions_file}", "output=runs/relative", tag="relative")
    assert status == "FAILED"
    # One line (the CLI shows the job's log twice: streamed, then in the status message).
    errors = {ln for ln in logs.splitlines() if ln.startswith("error: ")}
    assert len(errors) == 1, logs[-3000:]
    (error,) = errors
    assert "relative" in error and "URI" in error and "Traceback" not in logs


def test_ray_address_local_is_a_fresh_local_ray_even_inside_a_job(monkeypatch):
    """ray.address=local starts a Ray of its own (with ray.dashboard's setting) even where
    RAY_ADDRESS names a cluster; null joins that cluster; auto joins the one running here."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert is_local_ray(RaySettings(address="local"))
    assert not is_local_ray(RaySettings()) and not is_local_ray(RaySettings(address="auto"))
    monkeypatch.delenv("RAY_ADDRESS")
    assert is_local_ray(RaySettings()) and not is_local_ray(RaySettings(address="auto"))
