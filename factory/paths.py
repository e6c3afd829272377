"""Where the package's own files are: the Hydra configs and the bundled sample."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
SAMPLE_INPUT = str(Path(__file__).resolve().parent / "data" / "sample_captions.jsonl")
