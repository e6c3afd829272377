"""cluster/*.yaml checked offline by Ray's own code: the launcher's prepare_config + validate_config,
and KubeRay's RayCluster-to-autoscaler conversion (which validates its result too)."""
from __future__ import annotations

import copy
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ["aws.yaml", "gcp.yaml"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation must not reach any cloud: every outgoing connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
FIREWALL_TAG = "synth-factory-ray"


def split_env(command: str) -> tuple[dict, list[str]]:
    """`A=1 B=2 ray start ...` -> ({A: 1, B: 2}, [ray, start, ...]), as the shell reads it."""
    words = shlex.split(command)
    env = {}
    while words and ASSIGNMENT.fullmatch(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def ray_starts(config: dict) -> dict:
    """The `ray start` command of the head and of the workers."""
    starts = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (starts[key],) = [c for c in config[key] if "ray start" in c]
    return starts


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load(name)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)

    # Our own choices survive the merge with Ray's provider defaults.
    types = prepared["available_node_types"]
    assert set(types) == set(raw["available_node_types"])  # no default node type slipped in
    assert prepared["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0, "GPU": 0}
    gpu_types = [t for t, spec in types.items() if spec["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) >= 2  # a small and a large GPU node type
    for t, spec in types.items():
        assert {"CPU", "GPU"} <= set(spec["resources"]), f"{name}: {t} must write out its resources"
        if t != "head":
            assert 0 <= spec["min_workers"] <= spec["max_workers"] <= prepared["max_workers"]
    assert any("pip install" in c and "-e ." in c for c in prepared["setup_commands"])
    assert any('ray[data,default]==' in c for c in prepared["setup_commands"])  # the job server
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard is reached through `ray dashboard`


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_validation_catches_a_broken_config(name):
    """The check above can fail: a node type with a misspelled field is refused by Ray's schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = load(name)
    broken["available_node_types"]["head"]["resourcez"] = {"CPU": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def ray_cluster_cr(rayjob: dict) -> dict:
    """The RayCluster a RayJob creates: its metadata and the job's rayClusterSpec."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": dict(rayjob["metadata"]),
            "spec": copy.deepcopy(rayjob["spec"]["rayClusterSpec"])}


def test_kuberay_rayjob_converts_to_a_valid_autoscaling_config():
    import ray
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    job = load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "factory"]
    assert any(a.startswith("output=") and "://" in a for a in entry)  # pods are ephemeral
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__

    config = _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(job))  # runs validate_config
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["headgroup"]["resources"].get("GPU", 0) == 0
    assert types["gpu-1x"]["resources"]["GPU"] == 1 and types["gpu-1x"]["resources"]["CPU"] == 8
    assert (types["gpu-1x"]["min_workers"], types["gpu-1x"]["max_workers"]) == (0, 16)
    assert config["max_workers"] == 16 + 4


def test_kuberay_conversion_catches_a_broken_spec():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    job = load("kuberay-rayjob.yaml")
    cr = ray_cluster_cr(job)
    del cr["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(KeyError):
        _derive_autoscaling_config_from_ray_cr(cr)


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_starts_every_node_with_token_auth(name):
    """RAY_AUTH_MODE=token on each `ray start`, and the token shipped to Ray's default path on every node."""
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR, _get_default_token_path
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(load(name))
    validate_config(prepared)
    for key, command in ray_starts(prepared).items():
        env, words = split_env(command)
        assert env == {AUTH_MODE_ENV_VAR: "token"}, f"{name}: {key}"
        assert words[:2] == ["ray", "start"] and not any("0.0.0.0" in w for w in words)
    token = "~/" + str(_get_default_token_path().relative_to(Path.home()))  # ~/.ray/auth_token
    assert prepared["file_mounts"][token] == token  # from where `ray up` runs (cluster/auth-token.sh)
    assert f"chmod 600 {token}" in prepared["setup_commands"]
    assert "auth_token" in (ROOT / "cluster" / "auth-token.sh").read_text()


def test_aws_nodes_share_one_explicit_security_group():
    """Ray makes its own group (SSH open to 0.0.0.0/0) for any node type without SecurityGroupIds."""
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(load("aws.yaml"))
    groups = [spec["node_config"].get("SecurityGroupIds") for spec in prepared["available_node_types"].values()]
    assert all(groups) and len(groups[0]) == 1 and all(g == groups[0] for g in groups)
    assert "security_group" not in prepared["provider"]  # a name there would let Ray make the group


def test_gcp_nodes_carry_the_tag_the_firewall_rules_name():
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(load("gcp.yaml"))
    tags = [spec["node_config"].get("tags", {}).get("items") for spec in prepared["available_node_types"].values()]
    assert tags == [[FIREWALL_TAG]] * len(tags)
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert docs.count(f"--target-tags={FIREWALL_TAG}") == 3  # internal, SSH, deny-the-rest


def test_kuberay_rayjob_takes_the_token_from_a_secret():
    spec = load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"  # the operator's own containers (autoscaler, submitter)
    secret = spec["authOptions"]["secretName"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "value" not in env["RAY_AUTH_TOKEN"]  # never a literal token
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}


def test_no_token_is_committed():
    for path in (ROOT / "cluster").iterdir():
        assert not re.search(r"[0-9a-fA-F]{32,}", path.read_text()), path
