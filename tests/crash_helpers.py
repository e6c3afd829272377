"""Helpers for tests that run the CLI in a subprocess and kill it like a crash would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="", TOKENIZERS_PARALLELISM="false")


def cli(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "factory", *overrides]


def run_cli(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*overrides), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def start_cli(*overrides: str, log: Path) -> subprocess.Popen:
    """The CLI in its own process group, as a shell would start it."""
    return subprocess.Popen(cli(*overrides), cwd=ROOT, env=cli_env(), start_new_session=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def parquet_rows(directory: Path) -> int:
    rows = 0
    for f in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
        try:
            rows += pq.read_metadata(f).num_rows
        except (OSError, pa.ArrowInvalid):  # cannot happen: files are renamed into place whole
            raise AssertionError(f"half-written file visible: {f}") from None
    return rows


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a live process from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> list[int]:
    """SIGKILL the process group once ready() is true; returns what the run had started."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before it could be killed")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("the run never reached the point to kill it")
        time.sleep(0.02)
    tree = [proc.pid] + descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return tree


def wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    """Processes of a killed run still alive (not zombies) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if (st := _stat(p)) is not None and st[1] != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.25)


def manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def group_members(pgid: int) -> list[int]:
    """Live processes in a process group (what a `ray start` launched there), by /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def kill_pids(pids: list[int], grace: float = 5) -> list[int]:
    """SIGTERM, then SIGKILL what is left after `grace` seconds; returns what still lives."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        left = wait_gone(pids, grace)
        if not left:
            return []
    return left


class StageThatCannotLoad:
    """A stage whose constructor fails, as one given a model path that is not there."""

    def __init__(self, path: str):
        raise ValueError(f"no model at {path}")

    def __call__(self, batch):
        return batch


class Stamp:
    """Adds the time each row passed this stage (and sleeps a little per batch, like a model would)."""

    def __init__(self, column: str, sleep_s: float):
        self.column, self.sleep_s = column, sleep_s

    def __call__(self, batch: dict) -> dict:
        time.sleep(self.sleep_s)
        batch[self.column] = [time.time()] * len(batch["id"])
        return batch


def first_row_behind_repartition(ray, upstream_cpus: float, rows: int) -> int:
    """How many rows an upstream actor pool (`upstream_cpus` CPUs) had passed when the first row
    reached the pools behind a repartition step, laid out as the factory's generation stream: the
    curation pool, repartition, then a synthesis-like and a scoring-like pool of 0.5 CPU each."""
    from ray.data import ActorPoolStrategy

    pool = dict(compute=ActorPoolStrategy(size=1), batch_format="numpy")
    ds = ray.data.from_items([{"id": i} for i in range(rows)], override_num_blocks=rows // 16)
    ds = ds.map_batches(Stamp, fn_constructor_kwargs={"column": "curated", "sleep_s": 0.05}, num_cpus=upstream_cpus, batch_size=16, **pool)
    ds = ds.repartition(target_num_rows_per_block=8, strict=True)
    ds = ds.map_batches(Stamp, fn_constructor_kwargs={"column": "synthesized", "sleep_s": 0.0}, num_cpus=0.5, batch_size=8, **pool)
    ds = ds.map_batches(Stamp, fn_constructor_kwargs={"column": "scored", "sleep_s": 0.0}, num_cpus=0.5, batch_size=8, **pool)
    t = ds.to_arrow_refs()
    table = pa.concat_tables(ray.get(t))
    first = min(table.column("synthesized").to_pylist())
    return sum(c <= first for c in table.column("curated").to_pylist())
