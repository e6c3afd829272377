"""Where a run's output goes when it runs as a Ray job, which run holds it, and what a killed
run leaves behind.

`ray job submit --working-dir .` runs the driver inside a temporary, hashed package folder on
the head node: a relative `output` would land there and vanish with it, so it is refused.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from factory.errors import OutputInUseError
from factory.io import files

log = logging.getLogger("factory")

# Set by Ray's job supervisor in the environment of every `ray job submit` entrypoint.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
STAGING_PREFIX = ".dataset-staging-"


def in_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


def resolve_output(output: str) -> str:
    """A URI or absolute path as given; a relative path made absolute against the launch folder.

    Under `ray job submit` the launch folder is Ray's temporary package folder, so a relative
    path is an error there: the data would be deleted with the package.
    """
    if files.has_scheme(output) or output.startswith("file://") or os.path.isabs(os.path.expanduser(output)):
        return output
    if in_ray_job():
        raise ValueError(
            f"output={output} is a relative path, but this run is a Ray job whose working directory is a temporary "
            "package folder: pass an absolute path on shared storage or a URI (s3://..., gs://...)"
        )
    return os.path.abspath(os.path.expanduser(output))


def remove_stale_staging(output: str) -> int:
    """Delete dataset staging folders a killed run left in `output`; returns how many."""
    fs, p = files.resolve(output)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return 0
    stale = [i.path for i in fs.get_file_info(pafs.FileSelector(p)) if i.base_name.startswith(STAGING_PREFIX)]
    for path in stale:
        fs.delete_dir(path)
    return len(stale)


LOCK_NAME = ".factory-run.json"  # hidden: no reader takes it for data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def heartbeat_overdue(lock: dict, now: float) -> bool:
    """Whether `lock` has gone OutputLock.PATIENCE of its beats without a heartbeat, by the clock
    that gave `now` (meaningful on the lock's own host; elsewhere clocks may disagree)."""
    return now - float(lock["heartbeat"]) >= OutputLock.PATIENCE * float(lock.get("beat_s", 15.0))


class OutputLock:
    """Which run works on an output: `output/.factory-run.json` (host, pid, heartbeat), the
    heartbeat refreshed every `beat_s` seconds by a daemon thread.

    Two runs on one output would delete each other's rejects and staging folders and write the
    same samples twice, so a new run refuses an output whose lock is alive. On the same host a lock
    is alive while its pid lives and its heartbeat is younger than 2.5 beats (one clock, no skew).
    From another host the clocks may disagree, so the new run watches the lock for 2.5 of that
    run's beats instead: a heartbeat that moves is alive; one that does not is gone. `take_over`
    starts anyway, and the run that held the lock sees it is no longer its own and stops at its
    next batch. Two launched at the same moment: the one whose lock was overwritten leaves.
    """

    PATIENCE = 2.5  # beats without a heartbeat after which a lock counts as gone

    def __init__(self, output: str, beat_s: float = 15.0):
        self.path, self.beat_s = files.join(output, LOCK_NAME), beat_s
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "beat_s": beat_s}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_to: dict | None = None  # the lock of the run that took over, once seen
        self._looked = 0.0  # time.monotonic() of check()'s last read of the lock file

    def holder(self) -> dict | None:
        if not files.exists(self.path):
            return None
        try:
            lock = json.loads(files.read_bytes(self.path))
        except (FileNotFoundError, ValueError):  # gone meanwhile, or not JSON: as good as none
            return None
        return lock if isinstance(lock, dict) and {"host", "pid", "token", "heartbeat"} <= set(lock) else None

    def looks_gone(self, lock: dict) -> bool:
        """Without waiting: its heartbeat is overdue, or it ran on this host and its pid is dead."""
        return heartbeat_overdue(lock, time.time()) or (lock["host"] == self.mine["host"] and not _pid_alive(int(lock["pid"])))

    def alive(self, lock: dict) -> bool:
        """Whether the run that wrote `lock` still runs (from another host: watched, which takes time)."""
        if lock["host"] == self.mine["host"]:
            return not self.looks_gone(lock)
        patience = self.PATIENCE * float(lock.get("beat_s", 15.0))
        log.info("%s is locked by a run on %s (pid %s): watching its heartbeat for %.0f s", self.path, lock["host"], lock["pid"], patience)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            time.sleep(min(1.0, patience / 10))
            now = self.holder()
            if now is None:
                return False  # released meanwhile
            if (now["token"], now["heartbeat"]) != (lock["token"], lock["heartbeat"]):
                return True
        return False

    def acquire(self, take_over: bool = False) -> dict | None:
        """Take the lock (or raise OutputInUseError); returns the lock taken over, if there was one."""
        other = self.holder()
        if other and not take_over and self.alive(other):
            other = self.holder() or other
            raise OutputInUseError(
                f"{self.path.rsplit('/', 1)[0]} is in use by a run on {other['host']} (pid {other['pid']}), whose heartbeat "
                f"was {max(0.0, time.time() - float(other['heartbeat'])):.0f} s ago: wait for it or stop it "
                "(resume.take_over=true starts now, and the other run stops)"
            )
        self.mine["since"] = time.time()  # when this run took the output: `status` tells a starting run by it
        # Where no lock was, it is made in one exclusive step (local disks, NFS): of two runs that
        # both found none, the file system lets one make it, and the other leaves at once.
        made = files.create_exclusive(self.path, files.json_bytes(self._record())) if other is None else None
        if made is False and (now := self.holder()) is not None:
            raise self._raced(now)
        if not made:
            self._overwrite_and_settle()
        self._thread = threading.Thread(target=self._run, name="factory-output-lock", daemon=True)
        self._thread.start()
        return other

    def _overwrite_and_settle(self) -> None:
        """Replace the lock (one gone, or on storage without an exclusive step). Two runs that both
        did so: the later write wins, and the run whose lock was overwritten sees it here (or, if
        its write came later still, the other run's heartbeat thread sees it and that run stops at
        its next batch)."""
        self._beat()
        time.sleep(min(1.0, self.beat_s / 4))
        now = self.holder()
        if now is not None and now["token"] != self.mine["token"]:
            raise self._raced(now)

    def _raced(self, now: dict) -> OutputInUseError:
        return OutputInUseError(
            f"{self.path.rsplit('/', 1)[0]} was taken at the same moment by a run on {now['host']} (pid {now['pid']}): "
            "this run leaves it to that one"
        )

    def _record(self) -> dict:
        return dict(self.mine, heartbeat=time.time())

    def _beat(self) -> None:
        files.write_json_atomic(self.path, self._record())

    def _run(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                lock = self.holder()
                if lock and lock["token"] != self.mine["token"]:
                    self.lost_to = lock  # taken over: never write it back
                    return
                self._beat()
            except OSError:  # storage hiccup: the next beat tries again
                pass

    def check(self, fresh: bool = False) -> None:
        """Raise OutputInUseError once another run has taken the lock over: as the heartbeat
        thread last saw it, or, with `fresh` or when that look is older than a fifth of a beat,
        as the lock file says now (the thread looks only once a beat)."""
        if not self.lost_to and (fresh or time.monotonic() - self._looked >= self.beat_s / 5):
            self._looked = time.monotonic()
            lock = self.holder()
            if lock and lock["token"] != self.mine["token"]:
                self.lost_to = lock
        if self.lost_to:
            raise OutputInUseError(
                f"another run (on {self.lost_to['host']}, pid {self.lost_to['pid']}) took over {self.path.rsplit('/', 1)[0]}: "
                "this run stops so that the two do not write the same samples"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        lock = self.holder()
        if lock and lock["token"] == self.mine["token"]:
            files.delete_file(self.path)
