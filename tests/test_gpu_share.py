"""On a one-GPU machine the synthesis and scoring pools share the GPU instead of one of them waiting
forever; Ray's own scheduler (a local Ray declaring one GPU) is the judge of what fits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from factory.pipeline import stage_gpus

ROOT = Path(__file__).resolve().parent.parent
RES = {"synth": {"actors": 1, "num_gpus": None}, "score": {"actors": 1, "num_gpus": None}}


def test_defaults_share_one_gpu_and_leave_bigger_clusters_and_explicit_values_alone():
    assert stage_gpus(RES, "cuda", "cuda", 1) == (0.75, 0.25)
    assert stage_gpus(RES, "cuda", "cuda", 2) == (1.0, 0.25)  # a GPU each
    assert stage_gpus(RES, "cuda", "cuda", 0) == (1.0, 0.25)  # autoscaler: GPUs still to come
    assert stage_gpus(RES, "cuda", "cpu", 1) == (1.0, 0.0)
    assert stage_gpus(RES, "cpu", "cpu", 0) == (0.0, 0.0)
    two = {"synth": {"actors": 2, "num_gpus": None}, "score": {"actors": 1, "num_gpus": None}}
    assert stage_gpus(two, "cuda", "cuda", 2) == (0.75, 0.25)
    explicit = {"synth": {"actors": 1, "num_gpus": 1}, "score": {"actors": 1, "num_gpus": None}}
    assert stage_gpus(explicit, "cuda", "cuda", 1) == (1.0, 0.25)


SCRIPT = """
import json, sys, ray
ray.init(address="local", num_cpus=2, num_gpus=int(sys.argv[1]), include_dashboard=False)

@ray.remote(num_cpus=0)
class Stage:
    def ready(self):
        return True

out = {}
for label, shares in json.loads(sys.argv[2]).items():
    actors = [Stage.options(num_gpus=g).remote() for g in shares]
    ready, _ = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=10)
    out[label] = len(ready)
    for a in actors:
        ray.kill(a)
print(json.dumps(out))
"""


def _scheduled(gpus: int, cases: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(gpus), json.dumps(cases)], cwd=ROOT, capture_output=True,
                       text=True, timeout=180, env=dict(os.environ, RAY_ADDRESS=""))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ray_schedules_both_pools_on_one_gpu_only_with_the_shared_defaults():
    synth, score = stage_gpus(RES, "cuda", "cuda", 1)
    two = {"synth": {"actors": 2, "num_gpus": None}, "score": {"actors": 1, "num_gpus": None}}
    s2, c2 = stage_gpus(two, "cuda", "cuda", 2)
    one = _scheduled(1, {"shared": [synth, score], "whole": [1.0, 0.25]})
    assert one == {"shared": 2, "whole": 1}  # a whole-GPU synthesis actor leaves the scorer pending
    assert _scheduled(2, {"shared": [s2, s2, c2]}) == {"shared": 3}
