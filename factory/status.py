"""`python -m factory status OUTPUT`: where a run on OUTPUT stands, from its manifest and lock.

Reads only files (local or a URI), so it works from any machine that sees the output, while the
run goes on, without Ray.
"""
from __future__ import annotations

import sys
import time

from factory.io import files
from factory.io.redact import redact
from factory.jobs import OutputLock
from factory.layout import read_manifest
from factory.progress import duration


def _ago(epoch: float | None) -> str:
    return f"{duration(max(0.0, time.time() - float(epoch)))} ago" if epoch else "?"


def aligned(rows: list[tuple[str, str]]) -> list[str]:
    """`key  value` lines, the values in one column."""
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {redact(v)}" for k, v in rows]  # an older manifest may hold credentials


def held_by(watcher: OutputLock, lock: dict) -> tuple[str, str]:
    # On the run's own host a dead pid settles it at once; elsewhere only the heartbeat can tell.
    gone = watcher.looks_gone(lock)
    return ("held by", f"{lock['host']} (pid {lock['pid']}), heartbeat {_ago(lock['heartbeat'])} by this machine's clock"
            + ("; it looks gone: the same command resumes it" if gone else ""))


def starting_lines(output: str, watcher: OutputLock, lock: dict, m: dict | None) -> list[tuple[str, str]]:
    """A run that holds the output but has not written its manifest yet: Ray's start-up and the
    pre-pass over the input come first (hours, for a big input)."""
    rows = [("output", redact(output)),
            ("status", f"starting (run {(m or {}).get('runs', 0) + 1}, started {_ago(lock['since'])}): Ray start-up and the pre-pass "
                       "over the input; counts come once it is done"),
            held_by(watcher, lock)]
    if m is not None:
        rows.append(("previous run", f"{m.get('status')}, started {_ago(m.get('started_at'))}"))
    return rows


def generated_on_disk(output: str, since: float) -> int:
    """Samples in the candidates/ files written at or after `since` (epoch seconds), from the files'
    footers: what a killed run made, also what it had not counted in its manifest yet."""
    infos = files.file_infos(files.join(output, "candidates"), ".parquet")
    new = [p for p, info in infos.items() if info.mtime is not None and info.mtime.timestamp() >= since]
    return files.parquet_dataset(new).count_rows() if new else 0


def samples_row(output: str, m: dict, gone: bool) -> tuple[str, str]:
    """Samples generated of those to make; for a run killed while running, counted from candidates/ now."""
    c = m.get("counts", {})
    at_most, resumed, generated = c["samples_at_most"], c.get("resumed", 0), c.get("generated", 0)
    if m.get("status") == "running" and gone and m.get("started_at"):
        generated = max(generated, generated_on_disk(output, float(m["started_at"])))
        when = "; counted in candidates/ now (the run is gone)"
    else:
        when = "" if m.get("status") != "running" else f"; counted {_ago(m.get('updated_at'))}"
    left = max(at_most - resumed, 0)
    share = f" ({100 * min(generated / left, 1):.1f}%)" if left else ""
    return "samples", f"{generated:,} generated of at most {left:,}{share}; {resumed:,} resumed{when}"


def status_lines(output: str) -> list[str]:
    """The status of the run on `output`, a line per fact; raises FileNotFoundError when no run has started."""
    manifest_path = files.join(output, "manifest.json")
    watcher = OutputLock(output)
    lock = watcher.holder()
    m = read_manifest(manifest_path) if files.exists(manifest_path) else None
    starting = bool(lock and lock.get("since") and not watcher.looks_gone(lock)
                    and (m is None or float(m.get("started_at") or 0) < float(lock["since"])))
    if starting:
        rows = starting_lines(output, watcher, lock, m)
        return aligned(rows)
    if m is None:
        raise FileNotFoundError(f"{manifest_path} not found: no run of this factory has started on {output}")
    c = m.get("counts", {})
    rows = [("output", redact(output)), ("status", f"{m.get('status')} (run {m.get('runs', 1)}, started {_ago(m['started_at']) if m.get('started_at') else m.get('started', '?')})")]
    if m.get("error"):
        rows.append(("error", m["error"]))
    if m.get("status") in ("stopped", "failed"):
        rows.append(("resume", "the same command goes on from the samples in candidates/"))
    if lock:
        rows.append(held_by(watcher, lock))
    else:
        rows.append(("held by", "no run" + ("; it was killed: the same command resumes it" if m.get("status") == "running" else "")))
    if "read" in c:
        rows.append(("captions", f"{c['read']:,} read" + (f", {c['rejected']:,} rejected" if "rejected" in c else "")))
    if "samples_at_most" in c:
        rows.append(samples_row(output, m, gone=not lock or watcher.looks_gone(lock)))
        p = m.get("progress") or {}
        if m.get("status") == "running" and p.get("rate_per_s"):
            rows.append(("rate", f"{p['rate_per_s']:.3g} samples/s over the last {duration(p.get('interval_s') or m['config'].get('progress_every_s', 60))}"
                         + (f", at most about {duration(p['left_s_at_most'])} left" if p.get("left_s_at_most") else "")))
    if c.get("rejected_by_reason"):
        rows.append(("rejected by", ", ".join(f"{k} {v:,}" for k, v in c["rejected_by_reason"].items())))
    sel = m.get("selection") or {}
    if m.get("status") == "complete":
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        rows.append(("selected", f"{c.get('selected', 0):,} pairs, threshold {fmt(sel.get('threshold'))}, mean clip_score "
                     f"{fmt(sel.get('mean_clip_score'))}, ssim {fmt(sel.get('mean_ssim'))}, score {fmt(sel.get('mean_score'))}"))
        if m.get("report", {}).get("index"):
            rows.append(("report", m["report"]["index"]))
    return aligned(rows)


USAGE = "usage: python -m factory status OUTPUT   (the output= folder or URI of a run)"


def main(argv: list[str]) -> int:
    args = [a[len("output="):] if a.startswith("output=") else a for a in argv]
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        lines = status_lines(args[0])
    except (OSError, ValueError) as exc:  # OSError: a missing folder, a bucket without credentials
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
