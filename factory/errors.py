"""The errors a user can fix, and their one-line wording (`error: …`, exit code 2)."""
from __future__ import annotations

import re


class RunError(Exception):
    """A run that must not start (or go on): one line for the user."""


class InputError(Exception):
    """A problem with the input as a whole: the run stops with this one line."""


class OutputInUseError(Exception):
    """Another run holds the output folder (or took it over from this one)."""


class SettingError(ValueError):
    """A setting refused before anything runs: `key` and what is wrong with it (which starts with
    its own separator: " must be …" or "='gif': expected …")."""

    def __init__(self, key: str, message: str = ""):
        self.key, self.message = key, message
        super().__init__(key + message)

    def under(self, key: str) -> "SettingError":
        """The same complaint about the config key `key` (a stage knows its field, not where it is configured)."""
        return SettingError(key, self.message)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): ")
STAGE_IN_RAY = re.compile(r"MapBatches\((\w+)\)")


def error_line(exc: BaseException) -> str:
    """One plain line for an error. Ray's wrappers carry the remote traceback as coloured text:
    its last `SomeError: message` line is the error raised in the task or actor constructor."""
    text = ANSI.sub("", str(exc)).strip()
    if type(exc).__module__.startswith("ray"):
        raised = [ln.strip() for ln in text.splitlines() if EXCEPTION_LINE.match(ln.strip())]
        if raised:
            return raised[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix, looking through Ray's wrappers; None
    for a bug (whose traceback is what a report needs)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # OSError: storage the user points at (a read-only folder, a missing bucket, no credentials).
        # ValueError: a setting (ours, or a library's: a model path, a device). Not Ray's wrappers,
        # and not pyarrow's own errors: a bad input file is an InputError before it gets that far,
        # so an ArrowInvalid is a bug.
        if (isinstance(exc, (InputError, RunError, OutputInUseError, ValueError, OSError))
                and not type(exc).__module__.startswith(("ray", "pyarrow"))):
            return error_line(exc)
        # A stage's actor failed to start (a model path that is not there, no such device).
        # (By name: the errors of `status` and the CLI's own import do not need Ray loaded.)
        if any(c.__name__ == "RayActorError" for c in type(exc).__mro__) and getattr(exc, "actor_init_failed", False):
            stage = STAGE_IN_RAY.search(str(exc))
            return f"{stage.group(1) if stage else 'an actor'} could not start: {error_line(exc)}"
        exc = exc.__cause__ or exc.__context__
    return None
