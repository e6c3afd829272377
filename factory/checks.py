"""One check shared by the settings and the stages: a number in range, refused in one line."""
from __future__ import annotations

import math

from factory.errors import SettingError


def number(key: str, value, whole: bool = False, low: float | None = None, nullable: bool = False, above: bool = False) -> None:
    """Refuse a value that is not a (whole) number ≥ low (> low with `above`), in one line naming `key`."""
    if value is None and nullable:
        return
    kind = "a whole number" if whole else "a number"
    ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and (value <= low if above else value < low)):
        bound = f" {'>' if above else '≥'} {low:g}" if low is not None else ""
        raise SettingError(key, f" must be {kind}{bound}{' or null' if nullable else ''}, got {value!r}")
