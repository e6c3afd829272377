"""A progress line in the run's log every so often: what a job's log (no progress bars) needs."""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("factory")


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min', '2 d 04 h'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


class ProgressLog:
    """Counts generated samples against an upper bound and logs rate and time left every `every_s`.

    The bound is the curated captions × repeat before the model stages (perplexity, judge), which
    may reject more: so "at most", and the estimate of time left errs long.
    """

    def __init__(self, at_most: int, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic, what: str = "samples"):
        self.at_most, self.every_s, self.clock, self.what = max(0, at_most), every_s, clock, what
        self.done = 0
        self.t0 = self.last_t = clock()
        self.last_done = 0
        self.rate: float | None = None  # samples/s over the last interval, once one has passed
        self.interval_s: float | None = None  # that interval: at least every_s, longer when batches are slow

    def add(self, n: int) -> str | None:
        """Count `n` more samples; returns (and logs) a line when one is due."""
        self.done += n
        now = self.clock()
        if self.every_s <= 0 or now - self.last_t < self.every_s:
            return None
        interval = self.interval_s = now - self.last_t
        rate = self.rate = (self.done - self.last_done) / max(interval, 1e-9)
        self.last_t, self.last_done = now, self.done
        line = f"progress: {self.done:,} of at most {self.at_most:,} {self.what}"
        if self.at_most:
            line += f" ({100 * min(self.done / self.at_most, 1):.1f}%)"
        line += f", {rate:.3g}/s over the last {duration(interval)}, {duration(now - self.t0)} so far"
        if rate > 0 and self.at_most > self.done:
            line += f", at most about {duration((self.at_most - self.done) / rate)} left"
        log.info(line)
        return line

    def figures(self) -> dict:
        """For manifest.json: the last interval's rate and the time left at that rate (an upper bound)."""
        left = (self.at_most - self.done) / self.rate if self.rate and self.at_most > self.done else None
        return {"rate_per_s": None if self.rate is None else round(self.rate, 4),
                "interval_s": None if self.interval_s is None else round(self.interval_s, 1),
                "left_s_at_most": None if left is None else round(left, 1)}
