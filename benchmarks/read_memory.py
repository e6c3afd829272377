"""Peak memory of reading one big caption file: the reader alone, the pre-pass, the generation pass's read.

    python benchmarks/read_memory.py [--mib 1024] [--formats jsonl.gz,jsonl] [--cpus 2]

Writes a JSON Lines caption file of `--mib` MiB (decompressed; gzip-compressed and plain) under
/tmp, then reads it in three ways, each in a fresh process (a fresh local Ray where one is used):
  reader  factory.io.read.iter_caption_batches in the process itself, batch by batch;
  scan    factory.prepass.run_prepass through Ray tasks (ReadFiles, then ScanKeys), as a run's
          pre-pass (default curation; it collects every kept row's keys on the driver);
  stream  the ReadFiles(again=True) stage through Ray (factory.engine.stream.map_files), as the
          generation pass reads, its blocks pulled to the driver and dropped
(scan and stream: benchmarks/read_memory_ray.py, so that the reader's process imports no Ray).
The peak RSS of every process (the driver, Ray's own processes and workers) comes from each one's
VmHWM in /proc, sampled every 0.2 s. Printed last: the highest peak RSS of any process while reading
(reader and stream phases), in MB; the scan's own figure is printed above it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from factory.io.read import iter_caption_batches  # noqa: E402

RAY_PHASES = Path(__file__).resolve().parent / "read_memory_ray.py"  # scan and stream: Ray's imports only there

WORDS = ("red green old small quiet bright misty golden wooden tall car boat house dog cat tree lake street "
         "garden market bridge tower field river mountain window table lamp girl man child bird horse").split()


def write_captions(path: Path, mib: int, compress: bool) -> int:
    """A JSON Lines caption file of `mib` MiB of text (ids and captions, all distinct); returns its rows."""
    target, written, n = mib * 2**20, 0, 0
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if compress else (lambda p: open(p, "wb"))
    with opener(path) as f:
        while written < target:
            lines = []
            for i in range(n, n + 10_000):
                words = " ".join(WORDS[(i * k + k * k) % len(WORDS)] for k in range(3, 15))
                lines.append(json.dumps({"id": f"c{i}", "caption": f"A photo of a {words}, number {i}."}))
            chunk = ("\n".join(lines) + "\n").encode()
            f.write(chunk)
            written, n = written + len(chunk), n + len(lines)
    return n


def read_alone(path: str) -> dict:
    """The reader phase (in a process of its own): every batch of `path`; rows and seconds."""
    t = time.perf_counter()
    rows = sum(b.num_rows for b in iter_caption_batches(path, 0))
    return {"rows": rows, "seconds": round(time.perf_counter() - t, 1)}


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _memory_kib(pid: int) -> tuple[int, int, str] | None:
    """(peak RSS, private RSS now: anonymous memory, not the object store's shared pages) and command."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith(("VmHWM:", "RssAnon:"))}
    return fields.get("VmHWM", 0), fields.get("RssAnon", 0), cmd


def measure(script: Path, args: list[str]) -> tuple[dict, dict[int, list]]:
    """Runs `script` with `args` in a child process; (its result, {pid: [peak RSS KiB, peak
    private RSS KiB, command]} of every process it made)."""
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    peaks: dict[int, list] = {}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for pid in _tree(proc.pid):
                if got := _memory_kib(pid):
                    old = peaks.setdefault(pid, [0, 0, got[2]])
                    old[0], old[1] = max(old[0], got[0]), max(old[1], got[1])
                    old[2] = got[2] or old[2]  # a worker's title changes (ray::IDLE, ray::MapBatches...)
            done.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out = proc.communicate()[0]
    done.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode})")
    peaks[proc.pid][2] = "driver"
    return json.loads(out.strip().splitlines()[-1]), peaks


def label(cmd: str) -> str:
    """driver, a Ray worker (ray::...) or the program of one of Ray's own processes."""
    if cmd == "driver" or cmd.startswith("ray::"):
        return cmd.split()[0]
    return cmd.split()[0].rsplit("/", 1)[-1][:40] if cmd.strip() else "?"


def report(name: str, fmt: str, result: dict, peaks: dict[int, list]) -> int:
    """Prints a phase's line; returns the highest peak RSS (KiB) of its processes."""
    rows = sorted(((rss, anon, label(cmd)) for rss, anon, cmd in peaks.values()), reverse=True)
    top = ", ".join(f"{who} {rss / 1024:,.0f} ({anon / 1024:,.0f})" for rss, anon, who in rows[:4])
    keys = f"; keys on the driver: {result['keys']:,} rows, {result['keys_mb']:,} MB" if "keys" in result else ""
    print(f"{fmt:9s} {name:7s} {result['rows']:>11,} rows {result['seconds']:7.1f} s  peak RSS MB (private): {top}{keys}", flush=True)
    return rows[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="decompressed size of the caption file")
    ap.add_argument("--formats", default="jsonl.gz,jsonl")
    ap.add_argument("--phases", default="reader,scan,stream")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--block-mb", type=float, help="ray.block_size_mb (default: the config's)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:  # the child process of the reader phase
        print(json.dumps(read_alone(args.file)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="read-memory-", dir="/tmp"))
    try:
        reading, scanning = 0, 0
        for fmt in args.formats.split(","):
            path = tmp / f"captions.{fmt}"
            t = time.perf_counter()
            n = write_captions(path, args.mib, fmt.endswith(".gz"))
            print(f"{fmt}: {n:,} rows, {args.mib:,} MiB of text, {path.stat().st_size / 2**20:,.0f} MiB on disk "
                  f"(written in {time.perf_counter() - t:.0f} s)", flush=True)
            for name in args.phases.split(","):
                child = ["--phase", name, "--file", str(path), "--cpus", str(args.cpus)] + (
                    ["--block-mb", str(args.block_mb)] if args.block_mb else [])
                result, peaks = measure(Path(__file__) if name == "reader" else RAY_PHASES, child)
                top = report(name, fmt, result, peaks)
                if name == "scan":
                    scanning = max(scanning, top)
                else:
                    reading = max(reading, top)
            path.unlink()
        if scanning:
            print(f"pre-pass (run_prepass, keys collected on the driver): highest peak RSS of any process {scanning / 1024:,.0f} MB")
        print(f"highest peak RSS of any process while reading a {args.mib:,} MiB caption file (MB; goal < 1000):")
        print(f"{reading / 1024:.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
