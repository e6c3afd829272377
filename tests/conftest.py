"""Shared fixtures: tiny models built once per session, a local Ray, configs from conf/."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# The files that take longest (several CLI runs each, minutes on two cores), run first: with
# `make test`'s two workers taking whole files (--dist loadfile), the last file to start is then a
# short one and neither worker idles at the end. Order only; no test is left out.
LONGEST_FIRST = ["test_resume.py", "test_lost_node.py", "test_generators.py", "test_dist_run.py", "test_curate_e2e.py",
                 "test_outputs.py", "test_cli.py", "test_lock.py", "test_job_submit.py", "test_curate_cmd.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Tiny models go to a fresh cache for the session (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("factory-cache")
    os.environ["FACTORY_CACHE"] = str(path)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        from factory.engine.shuffle import ONE_WORKER_POOL

        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"FACTORY_CACHE": os.environ["FACTORY_CACHE"], "PYTHONPATH": str(ROOT), **ONE_WORKER_POOL}})
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def root_logging_as_found(bare: bool):
    """The root logger's handlers and level as they were once the block ends (main() configures
    logging for a process of its own); `bare`: without any handler inside the block."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    if bare:
        for handler in handlers:
            root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def factory_main(capsys, *argv: str) -> subprocess.CompletedProcess:
    """`python -m factory ARGV` through its main() in this process, with the exit code, stdout and
    stderr a subprocess would give. For commands that end before Ray starts (refusals, `status`,
    `--help`): a new interpreter spends about 10 CPU-seconds importing torch, diffusers and open_clip
    to print their one line. The real process keeps its own tests (test_cli.py: exit code 2 and a
    lone error line with nothing else on stderr)."""
    from factory.__main__ import main

    capsys.readouterr()
    with root_logging_as_found(bare=False):  # main() may add a root handler bound to this test's captured stdout
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([sys.executable, "-m", "factory", *argv], code, out, err)


def factory_run(*argv: str) -> subprocess.CompletedProcess:
    """A whole run, `python -m factory ARGV`, through main() in this process on the session's local
    Ray (the `ray_local` fixture must be up): stdout (the factory's log lines and summary), stderr
    and the exit code, as a subprocess would give them. A 4-caption run as its own process took
    33.6 s and 43 CPU-seconds on two idle cores (imports, a fresh Ray with its own processes and
    Ray Data's actors); through main() on a running Ray, 14-16 s. What a run does is the same;
    `ray.*` start settings (num_cpus, address) are the fixture's here. The process itself is
    checked by test_cli.py, test_lock.py, test_job_submit.py and the kill tests, which keep
    subprocesses. The process's logging and Ray Data context are restored after."""
    import ray
    from ray.data import DataContext

    from factory.__main__ import main

    assert ray.is_initialized(), "factory_run runs on the ray_local fixture's Ray"
    context = copy.copy(DataContext.get_current())
    out, err = io.StringIO(), io.StringIO()
    try:  # main() logs to its stdout through basicConfig, which needs a bare root
        with root_logging_as_found(bare=True), redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    finally:
        DataContext._set_current(context)
    return subprocess.CompletedProcess([sys.executable, "-m", "factory", *argv], code, out.getvalue(), err.getvalue())


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CAPTIONS = [
    "A golden retriever resting on a rainy street in Tokyo, with soft morning light.",
    "An old fisherman standing beside a calm lake at dawn, with warm golden tones.",
    "A red vintage car parked in an autumn forest, with vivid saturated colors.",
    "A bowl of ramen glowing in a sunlit kitchen, with a shallow depth of field.",
    "A snowy mountain cabin under a starry sky, with crisp winter air around it.",
    "Two children waiting on a crowded beach, with dramatic sunset colors.",
    "A tabby cat framed in a quiet library window, with high contrast shadows.",
    "A lighthouse surrounded by fog near a busy harbor, with a misty atmosphere.",
    "A street musician lit by candles on a cobblestone square, with warm tones.",
    "A hot air balloon drifting over a field of sunflowers, with soft light.",
    "A wooden sailboat reflected in a calm harbor at dusk, with pastel colors.",
    "A glass teapot on a wooden table in a greenhouse, with morning sunlight.",
]


@pytest.fixture
def captions_file(tmp_path):
    return write_jsonl(tmp_path / "captions.jsonl", [{"id": i + 1, "caption": c} for i, c in enumerate(CAPTIONS)])


def tiny_overrides(output: Path, input_path: Path, *extra: str) -> list[str]:
    return [f"output={output}", f"input={input_path}", "ray.progress_bars=false", "synth.steps=2", "select.k=5", *extra]
