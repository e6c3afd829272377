"""One run per output: output/.factory-run.json, its heartbeat, who may take it over, and what a
stopped run leaves behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from factory.jobs import LOCK_NAME, OutputInUseError, OutputLock
from tests.conftest import factory_main, factory_run
from tests.crash_helpers import manifest, parquet_rows, start_cli, wait_gone


def write_lock(output: Path, host: str, pid: int, age_s: float = 0.0, beat_s: float = 0.1) -> None:
    output.mkdir(parents=True, exist_ok=True)
    lock = {"host": host, "pid": pid, "token": "other", "beat_s": beat_s, "heartbeat": time.time() - age_s}
    tmp = output / f".{LOCK_NAME}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(lock))
    os.replace(tmp, output / LOCK_NAME)  # as the factory writes it: whole or not at all


@contextlib.contextmanager
def beating(output: Path, host: str, pid: int, beat_s: float = 0.1):
    """A run on another host, as its lock file shows it: a heartbeat every `beat_s` seconds."""
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            write_lock(output, host, pid, beat_s=beat_s)
            stop.wait(beat_s)

    write_lock(output, host, pid, beat_s=beat_s)  # there before the caller looks
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_beats_and_goes_with_its_run(tmp_path):
    lock = OutputLock(str(tmp_path / "out"), beat_s=0.05)
    assert lock.acquire() is None
    first = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
    time.sleep(0.3)
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["heartbeat"] > first["heartbeat"]
    lock.check()  # still ours: no error
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_live_run_keeps_others_out(tmp_path):
    held = OutputLock(str(tmp_path), beat_s=0.05)
    held.acquire()
    try:
        with pytest.raises(OutputInUseError) as err:
            OutputLock(str(tmp_path)).acquire()
        msg = str(err.value)
        assert f"pid {held.mine['pid']}" in msg and socket.gethostname() in msg and "resume.take_over=true" in msg
        assert "\n" not in msg
    finally:
        held.release()


def test_a_live_run_on_another_host_keeps_others_out(tmp_path):
    with beating(tmp_path, "head-7", 4242):
        t0 = time.monotonic()
        with pytest.raises(OutputInUseError, match=r"a run on head-7 \(pid 4242\)"):
            OutputLock(str(tmp_path)).acquire()
        assert time.monotonic() - t0 < 2  # a moving heartbeat answers within a beat or so


@pytest.mark.parametrize("case", ["another host, no heartbeat", "dead pid on this host", "live pid here, no heartbeat"])
def test_a_gone_run_is_taken_over(tmp_path, case):
    host, pid, age = {
        "another host, no heartbeat": ("head-7", 4242, 0.0),  # watched for 2.5 beats, which do not come
        "dead pid on this host": (socket.gethostname(), dead_pid(), 0.0),  # at once
        "live pid here, no heartbeat": (socket.gethostname(), os.getpid(), 1.0),  # a reused pid: 10 beats old
    }[case]
    write_lock(tmp_path, host, pid, age_s=age)
    lock = OutputLock(str(tmp_path))
    assert lock.acquire()["token"] == "other"  # the old lock, for the log line
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.mine["token"]
    lock.release()


def test_of_two_runs_started_at_once_on_a_local_output_one_takes_it_and_neither_waits(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the settling wait of storage without an exclusive step
    locks = [OutputLock(str(tmp_path / "out"), beat_s=60) for _ in range(2)]
    barrier, outcome = threading.Barrier(2), {}

    def start(i):
        barrier.wait()
        try:
            locks[i].acquire()
            outcome[i] = "took it"
        except OutputInUseError as e:
            outcome[i] = str(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcome.items() if o == "took it"]
    assert len(winners) == 1, outcome
    assert f"(pid {os.getpid()})" in outcome[1 - winners[0]]  # the other one was refused, naming the winner
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["token"] == locks[winners[0]].mine["token"]
    assert slept == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_NAME]  # no temporary file left
    locks[winners[0]].release()


def test_a_run_whose_look_came_before_another_runs_lock_leaves_at_once(tmp_path, monkeypatch):
    lock = OutputLock(str(tmp_path))
    looks, real = [], lock.holder

    def holder():  # its first look finds nothing; then the other run's lock lands
        looks.append(1)
        if len(looks) == 1:
            write_lock(tmp_path, "head-7", 4242)
            return None
        return real()

    monkeypatch.setattr(lock, "holder", holder)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with pytest.raises(OutputInUseError, match=r"taken at the same moment by a run on head-7 \(pid 4242\)"):
        lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "other"  # the winner's lock stays
    assert slept == []


def test_of_two_runs_taking_over_a_gone_lock_at_once_the_overwritten_one_leaves(tmp_path):
    write_lock(tmp_path, socket.gethostname(), dead_pid())  # gone: replaced, then settled
    lock = OutputLock(str(tmp_path), beat_s=2.0)  # it checks its lock again 0.5 s after writing it
    outcome = []

    def start():
        try:
            lock.acquire()
            outcome.append("took it")
        except OutputInUseError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=start)
    thread.start()
    while json.loads((tmp_path / LOCK_NAME).read_text())["token"] != lock.mine["token"]:
        time.sleep(0.005)
    write_lock(tmp_path, "head-7", 4242)  # the other run's write lands just after this one's
    thread.join()
    assert outcome and "taken at the same moment by a run on head-7 (pid 4242)" in outcome[0]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "other"  # the winner's lock stays


def test_take_over_stops_the_run_that_held_the_lock(tmp_path):
    held = OutputLock(str(tmp_path), beat_s=0.05)
    held.acquire()
    with pytest.raises(OutputInUseError):
        OutputLock(str(tmp_path)).acquire()
    new = OutputLock(str(tmp_path), beat_s=0.05)
    assert new.acquire(take_over=True)["token"] == held.mine["token"]
    deadline = time.monotonic() + 5
    while held.lost_to is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(OutputInUseError, match="took over"):
        held.check()
    held.release()  # leaves the new run's lock alone
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == new.mine["token"]
    new.release()


def overrides(captions: Path, output: Path, *extra: str) -> list[str]:
    return [f"input={captions}", f"output={output}", "ray.progress_bars=false", "ray.num_cpus=2", "synth.steps=2",
            "synth.batch_size=2", "score.batch_size=2", "score.ssim_size=64", "score.ssim_low=32", "select.k=3", *extra]


def test_cli_refuses_an_output_in_use_then_takes_it_once_gone(tmp_path, captions_file, capsys, ray_local):
    out = tmp_path / "out"
    with beating(out, "head-node-7", 1234):
        refused = factory_main(capsys, *overrides(captions_file, out))
    assert refused.returncode == 2
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "head-node-7 (pid 1234)" in lines[0], refused.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else touched

    taken = factory_run(*overrides(captions_file, out))  # its heartbeat has stopped
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert "head-node-7 (pid 1234) that is gone; this run takes over" in taken.stdout
    assert manifest(out)["status"] == "complete" and not (out / LOCK_NAME).exists()


def start_writing(captions_file: Path, out: Path, log: Path) -> subprocess.Popen:
    """A run on `out`, once it has written its first candidates."""
    proc = start_cli(*overrides(captions_file, out, "synth.repeat=4"), log=log)
    deadline = time.monotonic() + 240
    while parquet_rows(out / "candidates") < 2:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never started writing candidates"
        time.sleep(0.05)
    return proc


def test_sigterm_marks_the_run_stopped_and_frees_the_output(tmp_path, captions_file):
    """What `ray job stop` sends: ray.init turns SIGTERM into SystemExit in the driver."""
    for attempt in (1, 2, 3):
        out, log = tmp_path / f"out{attempt}", tmp_path / f"run{attempt}.log"
        proc = start_writing(captions_file, out, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        # Ray's core worker sometimes aborts while ray.shutdown() tears a local Ray down after a SIGTERM
        # (exit -6, after the stop line and the manifest): once in about four CI runs, twice in a row on
        # 2026-12-03. Skipping ray.shutdown() orphaned Ray's dashboard agent (tried), so the teardown
        # stays and gets two more tries here.
        if code != -signal.SIGABRT:
            break
        assert manifest(out)["status"] == "stopped"  # recorded before the teardown aborted
    assert code == 128 + 15  # the shell's code for SIGTERM, not an abort (134)
    last = [ln for ln in log.read_text().splitlines() if ln.strip()][-1]
    assert last == "stopped by signal 15: manifest.json says so; the same command resumes"
    m = manifest(out)
    assert m["status"] == "stopped" and m["error"] == "stopped by signal 15", m.get("error")
    # Counted from candidates/ when it stopped (the first 30 s save had not come yet, and the driver
    # may not have heard of batches the pool wrote); a batch in flight may still land after the count.
    assert 2 <= m["counts"]["generated"] <= parquet_rows(out / "candidates")
    assert not (out / LOCK_NAME).exists()
    from factory.status import status_lines

    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in status_lines(str(out)))
    assert rows["status"].startswith("stopped (run 1") and rows["held by"] == "no run"
    assert rows["resume"] == "the same command goes on from the samples in candidates/"
    wait_gone([proc.pid])


def test_check_sees_a_take_over_before_the_heartbeat_thread_does(tmp_path):
    """The thread looks once a beat; check(fresh=True) (before each manifest write and before the
    dataset is replaced) reads the lock file itself, so a run that lost its output writes nothing more."""
    held = OutputLock(str(tmp_path), beat_s=3600)  # the thread will not look during this test
    held.acquire()
    new = OutputLock(str(tmp_path), beat_s=3600)
    new.acquire(take_over=True)
    assert held.lost_to is None
    with pytest.raises(OutputInUseError, match="took over"):
        held.check(fresh=True)
    new.release()
    held.release()


def test_a_manifest_of_a_run_that_lost_its_output_is_never_written(tmp_path):
    from factory.layout import Manifest

    held = OutputLock(str(tmp_path), beat_s=3600)
    held.acquire()
    m = Manifest(str(tmp_path / "manifest.json"), {"output": str(tmp_path)}, {}, None, guard=lambda: held.check(fresh=True))
    m.save()
    new = OutputLock(str(tmp_path), beat_s=3600)
    new.acquire(take_over=True)
    (tmp_path / "manifest.json").write_text('{"status": "running", "by": "the new run"}')
    m.data["status"] = "failed"
    with pytest.raises(OutputInUseError):
        m.save()
    assert json.loads((tmp_path / "manifest.json").read_text())["by"] == "the new run"
    held.release()
    new.release()


def test_status_tells_a_starting_run_from_its_lock(tmp_path):
    """Before its manifest (Ray's start-up and the pre-pass come first) a run is seen by its lock:
    not "no run has started", and not the previous run's status as if it were this one's."""
    from factory.status import status_lines

    def rows():
        return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in status_lines(str(tmp_path)))

    with pytest.raises(FileNotFoundError, match="no run of this factory has started"):
        status_lines(str(tmp_path))
    lock = OutputLock(str(tmp_path), beat_s=3600)
    lock.acquire()
    try:
        r = rows()
        assert r["status"].startswith("starting (run 1, started ") and "pre-pass" in r["status"]
        assert r["held by"].startswith(f"{socket.gethostname()} (pid {os.getpid()})") and "previous run" not in r
        (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete", "runs": 2, "started_at": time.time() - 600,
                                                           "config": {}, "counts": {}}))
        r = rows()
        assert r["status"].startswith("starting (run 3, ") and r["previous run"].startswith("complete, started 10")
        (tmp_path / "manifest.json").write_text(json.dumps({"status": "running", "runs": 3, "started_at": time.time(),
                                                           "config": {}, "counts": {}}))
        assert rows()["status"].startswith("running (run 3, started ")  # its own manifest now speaks
    finally:
        lock.release()
