"""On a one-GPU machine the GPU pools (synthesis, scoring, and the curation models when they run on
CUDA) share the GPU instead of some waiting forever; Ray's own scheduler (a local Ray declaring one
GPU) is the judge of what fits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from factory.config import compose
from factory.engine.placement import gpu_shares
from factory.job import load_job

ROOT = Path(__file__).resolve().parent.parent
CUDA = ["model.device=cuda", "scorer.device=cuda"]
ALL = CUDA + ["curate.perplexity.enabled=true", "curate.perplexity.model=m", "curate.perplexity.max=10", "curate.perplexity.device=cuda",
              "curate.llm.enabled=true", "curate.llm.model=m", "curate.llm.device=cuda"]


def shares(overrides: list[str], gpus: float) -> dict:
    """GPUs per actor of each pool of this config, on a cluster of `gpus` GPUs (from the stages' declarations)."""
    job = load_job(compose(overrides))
    stages = job.pipeline.model_stages()
    by_id = gpu_shares(stages, job.config["resources"], gpus)
    return {s.pool: by_id[id(s)] for s in stages}


def pair(overrides, gpus):
    out = shares(overrides, gpus)
    return out["synth"], out["score"]


def test_defaults_share_one_gpu_and_leave_bigger_clusters_and_explicit_values_alone():
    assert pair(CUDA, 1) == (0.75, 0.25)
    assert pair(CUDA, 2) == (1.0, 0.25)  # a GPU each
    assert pair(CUDA, 0) == (1.0, 0.25)  # autoscaler: GPUs still to come
    assert pair(["model.device=cuda"], 1) == (1.0, 0.0)
    assert pair([], 0) == (0.0, 0.0)
    two = ["resources.synth.actors=2"]
    assert pair(CUDA + two, 2) == (0.75, 0.25)
    assert pair(CUDA + ["resources.synth.num_gpus=1"], 1) == (1.0, 0.25)


def test_curation_models_join_the_share():
    assert shares(ALL, 4) == {"perplexity": 0.5, "judge": 1.0, "synth": 1.0, "score": 0.25}  # 2.75 fit
    one = shares(ALL, 1)
    assert one == {"perplexity": 0.1, "judge": 0.1, "synth": 0.55, "score": 0.25} and sum(one.values()) <= 1
    # explicit: kept, and synthesis takes what is left
    assert shares(ALL + ["resources.judge.num_gpus=0.3"], 1) == {"perplexity": 0.1, "judge": 0.3, "synth": 0.35, "score": 0.25}
    assert shares(ALL + ["curate.llm.device=cpu"], 1)["judge"] == 0.0


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


def test_ray_schedules_every_pool_on_one_gpu_only_with_the_shared_defaults():
    synth, score = pair(CUDA, 1)
    s2, c2 = pair(CUDA + ["resources.synth.actors=2"], 2)
    everything = list(shares(ALL, 1).values())
    # cluster=gpu on 1-GPU nodes: its explicit shares must put a synthesis actor and a scorer on one GPU.
    res_gpu = compose(["cluster=gpu", "model=sdxl", "scorer=clip_l14_336"])["resources"]
    on_node = [res_gpu["synth"]["num_gpus"], res_gpu["score"]["num_gpus"]]
    one = _scheduled(1, {"shared": [synth, score], "whole": [1.0, 0.25], "curation too": everything,
                         "curation, old defaults": [0.5, 1.0, 0.75, 0.25], "cluster=gpu node": on_node})
    assert one == {"shared": 2, "whole": 1, "curation too": 4, "curation, old defaults": 2,  # the rest wait forever
                   "cluster=gpu node": 2}
    assert _scheduled(2, {"shared": [s2, s2, c2]}) == {"shared": 3}
