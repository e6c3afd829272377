"""What a run prints without a terminal (`ray job logs`, a batch system's log file): the factory's
own lines (progress every progress_every_s, the summary) on the console; Ray Data's operator
progress and issue-detector detail in OUTPUT/logs/ray-data.log."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from factory.io import files

RAY_DATA_LOGGER = "ray.data"
CONSOLE_HANDLERS = ("PlainRayHandler", "StreamHandler")


def has_terminal() -> bool:
    return sys.stdout.isatty()


@contextlib.contextmanager
def ray_data_to_file(output: str) -> Iterator[str | None]:
    """Without a terminal, move Ray Data's console log into OUTPUT/logs/ray-data.log (a local
    output; for a URI it stays in Ray's session log only) while the run lasts; yields the file, or
    None. On leaving, Ray Data's logger is as it was: a second run in the same process (a notebook,
    a test) logs to its own output only."""
    if has_terminal():
        yield None
        return
    logger = logging.getLogger(RAY_DATA_LOGGER)
    handlers, propagate = logger.handlers[:], logger.propagate
    for handler in handlers:
        if type(handler).__name__ in CONSOLE_HANDLERS:
            logger.removeHandler(handler)
    logger.propagate = False
    added = path = None
    try:
        if not files.has_scheme(output):
            path = os.path.join(files.resolve(output)[1], "logs", "ray-data.log")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            added = logging.FileHandler(path)
            added.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
            logger.addHandler(added)
        yield path
    finally:
        if added:
            logger.removeHandler(added)
            added.close()
        others = [h for h in logger.handlers if h not in handlers]  # added by someone else meanwhile: kept, after
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
        for handler in handlers + others:  # in their order: the console's handler is where it was
            logger.addHandler(handler)
        logger.propagate = propagate
