"""A worker node lost mid-run (Ray's own Cluster utility, ungraceful removal): the run completes and
every caption's samples are in candidates/ exactly once.

The cluster runs in a subprocess (`python tests/test_lost_node.py OUT INPUT`), so it never meets the
local Ray other tests share. Its head has no GPU and its two workers declare 2 GPUs each, so
`resources.synth.num_gpus=1` actors must be scheduled on the workers (model.device stays cpu), and
the survivor has room for the actors restarted from the lost node, as a replacement node would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from factory import schema as S

ROOT = Path(__file__).resolve().parent.parent
SYNTH_ACTOR = "MapWorker(MapBatches(generate_tiny))"  # the adapter names the operator after the stage's label
N_CAPTIONS, REPEAT = 12, 2


def synth_actors(ray) -> list[dict]:
    from ray._private.state import actors

    return [a for a in actors().values() if a["ActorClassName"] == SYNTH_ACTOR]


def drive(out: Path, input_path: Path) -> dict:
    """Start the cluster, run the factory, remove a synthesis node once candidates appear."""
    import ray
    from ray.cluster_utils import Cluster

    from factory.config import compose
    from factory.job import load_job
    from factory.run import run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT),
                                                                "FACTORY_CACHE": os.environ["FACTORY_CACHE"]}})
    report: dict = {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}

    def remove_when_candidates_appear():
        cands = out / "candidates"
        while not (cands.is_dir() and any(cands.glob("*.parquet"))):
            time.sleep(0.05)
        alive = [a for a in synth_actors(ray) if a["State"] == "ALIVE"]
        on = {a["Address"]["NodeID"] for a in alive}
        victim = next(w for w in workers if w.node_id in on)
        report["removed"] = victim.node_id
        report["rows_at_removal"] = sum(pq.read_metadata(f).num_rows for f in cands.glob("*.parquet"))
        report["synth_nodes_before"] = sorted(on)
        cluster.remove_node(victim, allow_graceful=False)

    watcher = threading.Thread(target=remove_when_candidates_appear, daemon=True)
    watcher.start()
    cfg = compose([
        f"input={input_path}", f"output={out}", f"ray.address={cluster.address}", "ray.progress_bars=false",
        "synth.steps=2", f"synth.repeat={REPEAT}", "synth.batch_size=2", "score.batch_size=2",
        "score.ssim_size=64", "score.ssim_low=32", "select.k=5",
        "resources.synth.actors=2", "resources.synth.num_gpus=1", "resources.synth.num_cpus=0.5",
        "resources.score.num_gpus=0", "resources.cpu_task_cpus=0.25",
    ])
    report["manifest"] = run(load_job(cfg))
    watcher.join(timeout=5)
    from factory.engine.ray_setup import nodes_without

    # Ray's own node-pinned tasks, on a real file and on a path no node has.
    report["probe"] = nodes_without([str(input_path), str(out / "no-such-file")])
    report["synth_actors_after"] = [
        {"node": a["Address"]["NodeID"], "state": a["State"], "restarts": a.get("NumRestarts", 0)} for a in synth_actors(ray)
    ]
    ray.shutdown()
    cluster.shutdown()
    return report


@pytest.fixture(scope="module")
def lost_node_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lost-node")
    lines = (ROOT / "factory" / "data" / "sample_captions.jsonl").read_text().splitlines()[:N_CAPTIONS]
    (d / "captions.jsonl").write_text("\n".join(lines) + "\n")
    out = d / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    r = subprocess.run([sys.executable, __file__, str(out), str(d / "captions.jsonl")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return out, d / "captions.jsonl", json.loads((d / "report.json").read_text())


def test_a_lost_gpu_worker_does_not_stop_the_run(lost_node_run):
    out, input_path, report = lost_node_run
    assert report["removed"] in report["workers"]
    assert 0 < report["rows_at_removal"]
    m = report["manifest"]
    assert m["status"] == "complete"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    # Every caption that passes curation has all its samples in candidates/, each exactly once.
    from factory.curate.rules import CaptionRules
    from factory.io.read import read_caption_file

    rows = CaptionRules()(read_caption_file(str(input_path), 0))
    kept = rows.filter(pc.is_null(rows.column(S.REASON))).column(S.ID).to_pylist()
    t = pa.concat_tables([pq.read_table(f, columns=[S.ID, S.SAMPLE, S.REASON]) for f in (out / "candidates").glob("*.parquet")])
    counts = t.group_by([S.ID, S.SAMPLE]).aggregate([([], "count_all")]).to_pylist()
    assert {(c[S.ID], c[S.SAMPLE]) for c in counts} == {(i, s) for i in kept for s in range(REPEAT)}
    assert {c["count_all"] for c in counts} == {1}
    assert t.filter(pc.is_valid(t.column(S.REASON))).num_rows == 0
    assert m["counts"]["generated"] == len(kept) * REPEAT


def test_every_node_was_checked_for_the_local_paths(lost_node_run):
    _, input_path, report = lost_node_run
    assert report["manifest"]["nodes_sharing_paths"] == 3  # head + 2 workers, before the removal
    n_alive, missing = report["probe"]
    assert n_alive == 2 and list(missing) == [str(input_path.parent / "out" / "no-such-file")]
    assert len(missing[str(input_path.parent / "out" / "no-such-file")]) == 2


def test_gpu_actors_ran_only_on_gpu_workers_and_were_restarted(lost_node_run):
    _, _, report = lost_node_run
    assert report["head"] not in report["synth_nodes_before"]  # a CPU-only head gets no GPU stage
    after = report["synth_actors_after"]
    assert all(a["node"] != report["head"] for a in after)
    # The actor on the lost node came back (Ray Data's pools restart lost actors) on the survivor.
    survivor = next(w for w in report["workers"] if w != report["removed"])
    assert any(a["restarts"] >= 1 and a["node"] == survivor for a in after), after


if __name__ == "__main__":
    out_dir, input_file = Path(sys.argv[1]), Path(sys.argv[2])
    os.environ.setdefault("FACTORY_CACHE", str(out_dir.parent / "cache"))
    result = drive(out_dir, input_file)
    (out_dir.parent / "report.json").write_text(json.dumps(result, default=str))
