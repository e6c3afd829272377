"""What a run prints without a terminal (`ray job logs`, a batch system's log file): the factory's
own lines (progress every progress_every_s, the summary) on the console; Ray Data's operator
progress and issue-detector detail in OUTPUT/logs/ray-data.log."""
from __future__ import annotations

import logging
import os
import sys

from factory.io import files

RAY_DATA_LOGGER = "ray.data"
CONSOLE_HANDLERS = ("PlainRayHandler", "StreamHandler")


def has_terminal() -> bool:
    return sys.stdout.isatty()


def ray_data_to_file(output: str) -> str | None:
    """Without a terminal, move Ray Data's console log into OUTPUT/logs/ray-data.log (a local
    output; for a URI it stays in Ray's session log only). Returns the file, or None."""
    if has_terminal():
        return None
    logger = logging.getLogger(RAY_DATA_LOGGER)
    for handler in logger.handlers[:]:
        if type(handler).__name__ in CONSOLE_HANDLERS:
            logger.removeHandler(handler)
    logger.propagate = False
    if files.has_scheme(output):
        return None
    path = os.path.join(files.resolve(output)[1], "logs", "ray-data.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    logger.addHandler(handler)
    return path
