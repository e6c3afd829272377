"""Spot pre-emption as a soak: tests/test_lost_node.py at soak size. A three-worker Ray cluster
(Ray's own Cluster utility) loses a random worker that holds a synthesis actor, without grace, and
gains a fresh one, CHURNS times, while the factory makes over 400 samples; every check of the test
must still hold (every sample in candidates/ exactly once, the dataset a clean run's).

    PYTHONPATH=. python benchmarks/lost_node_soak.py [--churns 3] [--captions 210]

Prints the pytest summary, then LAST the soak's wall seconds (the goal: it passes).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--churns", type=int, default=3)
    ap.add_argument("--captions", type=int, default=210)
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FACTORY_LOST_NODE_CHURNS=str(args.churns),
               FACTORY_LOST_NODE_CAPTIONS=str(args.captions))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_lost_node.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    print(r.stdout[-3000:], r.stderr[-2000:], sep="\n")
    if r.returncode:
        sys.exit(f"soak failed ({args.churns} churns, {args.captions} captions): pytest exit {r.returncode}")
    print(f"lost-node soak: {args.churns} churns on {args.captions} captions passed in {wall:.1f} s")
    return wall


if __name__ == "__main__":
    main()
