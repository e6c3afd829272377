"""`status` of a run killed while running: samples counted in candidates/, not the manifest's last save."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from factory import schema as S
from factory.jobs import LOCK_NAME
from factory.status import status_lines


def candidates(n: int, first: int = 0) -> pa.Table:
    ids = [f"c{i}" for i in range(first, first + n)]
    zeros = pa.array([0.5] * n, pa.float64())
    return pa.table({S.ID: ids, S.CAPTION: ids, S.SAMPLE: pa.array([0] * n, pa.int32()), S.GENERATOR: ["sdxl"] * n, S.SEED: pa.array([0] * n, pa.int64()),
                     S.IMAGE: [b"x"] * n, S.WIDTH: pa.array([4] * n, pa.int32()), S.HEIGHT: pa.array([4] * n, pa.int32()),
                     S.CLIP_SCORE: zeros, S.SSIM: zeros, S.SCORE: zeros, S.REASON: pa.array([None] * n, pa.string())}, schema=S.CANDIDATES)


def test_status_counts_a_killed_runs_samples_from_candidates(tmp_path):
    """The state a SIGKILL leaves: manifest `running` with no count saved yet, the lock of a dead pid,
    candidates/ with an earlier run's file and this run's files (told apart by their times)."""
    started = time.time() - 60
    (tmp_path / "candidates").mkdir()
    pq.write_table(candidates(5, 100), tmp_path / "candidates" / "part-old.parquet")
    os.utime(tmp_path / "candidates" / "part-old.parquet", (started - 600, started - 600))  # the run before
    pq.write_table(candidates(10), tmp_path / "candidates" / "part-a.parquet")
    pq.write_table(candidates(6, 10), tmp_path / "candidates" / "part-b.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "status": "running", "runs": 2, "started_at": started, "updated_at": started, "config": {},
        "counts": {"read": 30, "samples_at_most": 30, "resumed": 5, "generated": 0}}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "t",
                                                  "beat_s": 15.0, "heartbeat": time.time(), "since": started}))
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in status_lines(str(tmp_path)))
    assert rows["samples"] == "16 generated of at most 25 (64.0%); 5 resumed; counted in candidates/ now (the run is gone)"
    assert rows["held by"].endswith("it looks gone: the same command resumes it")
