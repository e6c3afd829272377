"""A worker node lost in the middle of the distributed dedup's shuffle (Ray's own Cluster utility,
ungraceful removal): Ray retries the lost tasks, rebuilds the lost shards from lineage, and the
rejected rows equal the driver implementation's.

The cluster runs in a subprocess (`python tests/test_dist_fault.py OUT`), apart from the local Ray
other tests share. Its head has two CPUs, its worker one. The partition function of the caption
dedup step is wrapped so that, on the worker node, it leaves a marker and waits: the node is removed
while that reduce task runs, with the shards of the shuffle's map tasks on it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# How long the reduce task on the worker waits before its work. A run that finishes sooner after the
# node went had the task retried elsewhere; it is long beside that retry (20-35 s on two busy cores).
WAIT_ON_WORKER_S = 120
NEAR = {"enabled": True, "threshold": 0.8, "bands": 16, "num_perm": 128, "shingle_size": 1, "max_bucket_span": 8}


def slow_on(node_id: str, marker: str, fn):
    """`fn`, which on node `node_id` first writes `marker` and waits for the node to go."""
    def wrapped(part, **kwargs):
        import ray

        if ray.get_runtime_context().get_node_id() == node_id:
            Path(marker).write_text(node_id)
            time.sleep(WAIT_ON_WORKER_S)
        return fn(part, **kwargs)
    return wrapped


def drive(out: Path) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray
    from ray.cluster_utils import Cluster

    from factory import schema as S
    from factory.engine import dist_dedup
    from factory.curate import near_dup as nd
    from factory.curate.dedup import ExactDedup, dedup_keys
    from factory.curate.near_dup import NearDedup
    from factory.prepass import find_losers
    from tests.fixtures.planted import planted_pool
    from factory.engine.shuffle import ONE_WORKER_POOL

    # The GCS marks the lost node dead after 3 missed health checks 0.5 s apart (not 5 x 3 s): a faster test.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": health})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **ONE_WORKER_POOL}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    marker = out / "marker"
    report: dict = {"worker": worker.node_id}

    def remove_when_marked():
        while not marker.exists():
            time.sleep(0.05)
        report["marked_by"], report["marked_at"] = marker.read_text(), time.time()
        cluster.remove_node(worker, allow_graceful=False)

    captions, _ = planted_pool(2000, near_fraction=0.15, exact_fraction=0.05, seed=21)
    n = len(captions)
    base = pa.table({S.ID: [str(i % 1980) for i in range(n)], S.CAPTION: captions, S.POS: pa.array(range(n), pa.int64()),
                     S.REASON: pa.array([None] * n, pa.string())})
    keys = dedup_keys(base).append_column(S.MINHASH, nd.signature_column(captions, 128, 1))
    dedup = [ExactDedup(), NearDedup(**NEAR)]
    ref = find_losers(keys, dedup)
    dist_dedup.mark = slow_on(worker.node_id, str(marker), dist_dedup.mark)
    watcher = threading.Thread(target=remove_when_marked, daemon=True)
    watcher.start()
    start = time.time()
    ds = ray.data.from_arrow([keys.slice(i, 250) for i in range(0, n, 250)])
    got = pa.concat_tables(ray.get(dist_dedup.duplicate_losers(ds, dedup, partitions=4).to_arrow_refs()))
    report["finished_at"] = time.time()
    report["started_at"] = start
    report["alive_nodes"] = sum(1 for node in ray.nodes() if node["Alive"])

    def rows(t):
        return sorted(zip(*(t.column(c).to_pylist() for c in (S.POS, S.REASON, S.DETAIL))))

    report["equal"] = rows(got) == rows(ref)
    report["rejected"] = [len(rows(ref)), len(rows(got))]
    report["near"] = int(np.sum(np.array(ref.column(S.REASON).to_pylist()) == S.R_NEAR_DUP))
    ray.shutdown()
    cluster.shutdown()
    return report


def test_a_node_lost_mid_shuffle_changes_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    r = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["marked_by"] == report["worker"]  # a reduce task was running on the worker when it went
    # That task waits WAIT_ON_WORKER_S before its work: the run finished sooner, so it was retried elsewhere.
    assert report["started_at"] < report["marked_at"] < report["finished_at"] < report["marked_at"] + WAIT_ON_WORKER_S
    assert report["alive_nodes"] == 1
    assert report["near"] > 100
    assert report["equal"], report["rejected"]


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    (out_dir / "report.json").write_text(json.dumps(drive(out_dir)))
