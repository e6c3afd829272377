"""The launcher configs' own head start command, run on this machine with the token that
cluster/auth-token.sh makes: the dashboard's job API, the dashboard agent's job API and the GCS refuse
a request without the right token (and no command runs), and take one with it.

HOME is a temp folder, so the token sits at Ray's default path (~/.ray/auth_token) of this test only.
Only the processes this module starts are stopped (their process group and descendants), never with
`ray stop`, which would stop every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import ray.util

from tests.crash_helpers import ROOT, descendants, group_members, kill_pids
from tests.test_cluster_configs import load, ray_starts, split_env
from tests.test_job_submit import RAY, free_ports

# Flags whose values are machine-wide ports: each gets a free one here, so that other Rays can run.
PORT_FLAGS = ("--port", "--object-manager-port", "--dashboard-port", "--ray-client-server-port",
              "--dashboard-agent-listen-port")


def head_start_command(name: str) -> str:
    return ray_starts(load(name))["head_start_ray_commands"]


def local_args(words: list[str], temp: Path, ports: dict) -> list[str]:
    """The config's `ray start` flags, made to run here: its ports swapped for free ones (and the ports
    it leaves at Ray's defaults given free ones too), a temp dir of its own, and no
    --autoscaling-config, which names the launcher's bootstrap file (the monitor would call AWS)."""
    assert words[:3] == ["ray", "start", "--head"], words
    args = []
    for word in words[2:]:  # --head and the rest
        flag = word.split("=", 1)[0]
        if flag == "--autoscaling-config" or flag in ports:
            continue
        args.append(word)
    args += [f"{flag}={port}" for flag, port in ports.items()]
    return args + [f"--temp-dir={temp}", "--disable-usage-stats"]


def stop(proc: subprocess.Popen) -> list[int]:
    """Stops what a `ray start` left running: its process group and what those spawned."""
    pids = set(group_members(proc.pid))
    for member in list(pids):
        pids.update(descendants(member))
    return kill_pids(sorted(pids))


def answers(url: str, timeout: float = 60) -> bool:
    """Whether an HTTP server answers at `url` (any status) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def head():
    """The head, started by the configs' own start command with the token cluster/auth-token.sh made."""
    command = head_start_command("aws.yaml")
    assert head_start_command("gcp.yaml") == command  # one run checks both configs
    # (tests/test_cluster_configs.py checks that the command sets RAY_AUTH_MODE=token, which matters:
    # a head that finds ~/.ray/auth_token turns token auth on by itself, a joining worker does not.)
    yaml_env, words = split_env(command)
    temp = Path(tempfile.mkdtemp(prefix="ra", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    home = temp / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    base.update(HOME=str(home), PATH=f"{Path(RAY).parent}:{base.get('PATH', '')}")
    proc = None
    try:
        script = subprocess.run(["bash", str(ROOT / "cluster" / "auth-token.sh")], env=base,
                                capture_output=True, text=True, timeout=60)
        assert script.returncode == 0, script.stderr[-2000:]
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        proc = subprocess.Popen([RAY, "start", *local_args(words, temp / "ray", ports)], env={**base, **yaml_env},
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-3000:]
        agent_port = ports["--dashboard-agent-listen-port"]
        info = {"env": base, "home": home, "script": script, "ports": ports,
                "dashboard": f"http://127.0.0.1:{ports['--dashboard-port']}",
                "agents": [f"http://{host}:{agent_port}" for host in (ray.util.get_node_ip_address(), "127.0.0.1")]}
        for url in [info["dashboard"], *info["agents"]]:
            assert answers(f"{url}/api/healthz"), f"nothing answers at {url}"
        yield info
    finally:
        left = stop(proc) if proc is not None else []
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"could not stop {left}"


def token(head) -> str:
    return (head["home"] / ".ray" / "auth_token").read_text()


def post_job(url: str, entrypoint: str, bearer: str | None = None) -> tuple[int, str]:
    """A job request as any program on the network could send it (no Ray client)."""
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    body = json.dumps({"entrypoint": entrypoint, "submission_id": f"auth-{uuid.uuid4().hex[:8]}"}).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.exists()


def refused(url: str, marker: Path) -> list[int]:
    """Statuses of a job request without a token and with a wrong one; each would touch `marker`."""
    return [post_job(url, f"touch {marker}")[0], post_job(url, f"touch {marker}", "0" * 64)[0]]


def test_the_token_script_makes_a_private_token_and_keeps_it(head):
    path = head["home"] / ".ray" / "auth_token"
    secret = token(head)
    assert re.fullmatch(r"[0-9a-f]{64}", secret)  # Ray's generator: 256 random bits in hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secret not in head["script"].stdout + head["script"].stderr
    again = subprocess.run(["bash", str(ROOT / "cluster" / "auth-token.sh")], env=head["env"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and token(head) == secret  # an existing token is kept
    assert secret not in again.stdout + again.stderr


def test_the_dashboard_job_api_needs_the_token(head, tmp_path):
    jobs = f"{head['dashboard']}/api/jobs/"
    assert refused(jobs, tmp_path / "unauthenticated") == [401, 403]
    # Ray's own CLI without RAY_AUTH_MODE=token sends no token: refused with Ray's message.
    cli = [RAY, "job", "submit", "--address", head["dashboard"], "--"]
    plain = subprocess.run([*cli, "touch", str(tmp_path / "cli-plain")], env=head["env"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "Authentication required" in plain.stdout + plain.stderr
    # With it (as docs/cluster.md says), the token in ~/.ray/auth_token is sent; the job's driver
    # connects to the cluster with it too.
    ok = tmp_path / "authenticated"
    driver = f"import ray; ray.init(); open({str(ok)!r}, 'w').write(str(ray.cluster_resources()))"
    run = subprocess.run([*cli, "python", "-c", driver], env={**head["env"], "RAY_AUTH_MODE": "token"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "node:__internal_head__" in ok.read_text()
    assert not (tmp_path / "unauthenticated").exists() and not (tmp_path / "cli-plain").exists()


def test_the_dashboard_agent_job_api_needs_the_token(head, tmp_path):
    for i, agent in enumerate(head["agents"]):  # the node's address, and localhost
        assert refused(f"{agent}/api/job_agent/jobs/", tmp_path / f"unauthenticated-{i}") == [401, 403]
    ok = tmp_path / "authenticated"
    status, body = post_job(f"{head['agents'][0]}/api/job_agent/jobs/", f"touch {ok}", token(head))
    assert status == 200, body[-2000:]
    assert wait_for(ok, 60), "the authenticated job never ran"
    assert not list(tmp_path.glob("unauthenticated-*"))


def test_the_gcs_refuses_a_wrong_token(head):
    address = f"--address=127.0.0.1:{head['ports']['--port']}"
    env = {**head["env"], "RAY_AUTH_MODE": "token"}
    wrong = subprocess.run([RAY, "status", address], env={**env, "RAY_AUTH_TOKEN": "0" * 64},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "InvalidAuthToken" in wrong.stdout + wrong.stderr
    right = subprocess.run([RAY, "status", address], env=env, capture_output=True, text=True, timeout=120)
    assert right.returncode == 0, (right.stdout + right.stderr)[-2000:]
