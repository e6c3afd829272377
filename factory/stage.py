"""The stage contract: every step of the pipeline is a small dataclass that declares what the rest
of the factory needs to know about it, and implements two methods.

Declared (class attributes, read by the engine, the fingerprint, the summary):
- `name`: how logs, the per-stage summary and Ray's operators call it;
- `pool`: for stages with models, the `resources.<pool>` block that sizes its actor pool;
- `batch_format` ("pyarrow" or "numpy") and the batch size (`batch_rows()`);
- `needs`: its resources (CPUs, GPUs while its device is CUDA, its share when GPUs are scarce, memory);
- `reasons`: the reject reasons it may give a row;
- `speed_only`: the fields that change how fast it runs, never what it makes.
Its fields are its parameters: what the config sets, what the resume fingerprint records.

Implemented: `setup()` loads models (once per actor, or once in a plain loop) and `process(batch)`
works on a batch. A stage imports no Ray: a test runs `stage(batch)` in a plain loop, and
factory/engine/adapter.py turns the same object into a Ray Data operator.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S

GiB = 2**30
# What a Python process with torch, pyarrow and a model's code imported holds before its weights
# (measured: a tiny-model actor peaks at about 1.5 GiB; Ray Data warned at 1.9 GiB over a run).
PROCESS_BYTES = 2 * GiB


@dataclass(frozen=True)
class Resources:
    """What one task or actor of a stage asks Ray for."""

    cpus: float = 0.25
    gpus: float = 0.0  # per actor while the stage's device is CUDA (0 on CPU)
    gpu_share: float | None = None  # per actor where the cluster has fewer GPUs than all stages ask for; None: what the others leave of one GPU
    memory: int = 0  # bytes of host memory per task or actor (Ray schedules by it; 0: no reservation)
    threads: int | None = None  # torch threads per actor (None: torch's own choice)


@dataclass
class Stage:
    """Base of every stage; see the module's docstring for the contract."""

    name: ClassVar[str] = "stage"
    pool: ClassVar[str | None] = None  # resources.<pool> sizes its actor pool; None: Ray tasks
    batch_format: ClassVar[str] = "pyarrow"
    default_batch_rows: ClassVar[int | None] = 1024
    needs: ClassVar[Resources] = Resources()
    reasons: ClassVar[tuple[str, ...]] = ()
    speed_only: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        check_finite(self)
        self._ready = False

    # ---- declarations that may depend on the fields -------------------------------------------

    def on_gpu(self) -> bool:
        """Whether the stage asks for a CUDA device (its `device` field, where it has one; "auto"
        asks for none: the driver cannot know what the workers have)."""
        return str(getattr(self, "device", "cpu")).startswith("cuda")

    def resources(self) -> Resources:
        """`needs`, with the memory a subclass can size from its model (see memory_bytes)."""
        memory = self.memory_bytes()
        return dataclasses.replace(self.needs, memory=memory) if memory is not None else self.needs

    def memory_bytes(self) -> int | None:
        """Host bytes one task or actor needs; None: the declared `needs.memory`."""
        return None

    def batch_rows(self) -> int | None:
        return getattr(self, "batch_size", self.default_batch_rows)

    def params(self) -> dict:
        """The fields that define what the stage makes: every field but the speed-only ones."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.speed_only}

    def label(self) -> str:
        """Its name in Ray's operators, the summary and the busy-seconds columns (a word)."""
        return self.name

    def engine(self) -> str:
        """How the engine runs it: "actors" (a pool that keeps its models), "tasks", or a stage's own."""
        return "actors" if self.pool else "tasks"

    # ---- work -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Runs once on the driver before anything streams: make the folders its tasks write into
        (a task then never makes one, so a node without the run's storage fails loudly)."""

    def setup(self) -> None:
        """Load what `process` needs (models); runs once per actor, before the first batch."""

    def process(self, batch):
        raise NotImplementedError

    def loaded(self) -> "Stage":
        """The stage, set up (once): what a plain loop or a test calls before using its methods."""
        if not self._ready:
            self.setup()
            self._ready = True
        return self

    def __call__(self, batch):
        """A plain loop's entry (a test, the driver): prepared and set up on first use, then process.
        The engine never calls this: it prepares on the driver and sets up where the stage runs."""
        if not self._ready:
            self.prepare()
        return self.loaded().process(batch)

    def __getstate__(self) -> dict:
        """Only the fields travel (to Ray's workers): models are loaded where the stage runs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()  # what the fields imply (compiled patterns, sets) is rebuilt where the stage runs


def check_finite(obj) -> None:
    """A float field that is NaN or infinite is refused in one line (the config accepts 'inf')."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v}")


@dataclass
class CaptionFilter(Stage):
    """A stage that rejects captions: `judge` says why (reason, detail) or None for each caption
    not rejected yet; the marking of reason/detail is done here once for every filter.

    `before_dedup`: cheap filters (rules) run in the pre-pass too, so that a caption they reject
    never wins a duplicate group and takes a good duplicate down with it. The others (models) see
    only captions that survived deduplication.
    """

    before_dedup: ClassVar[bool] = False
    enabled: bool = True

    def judge(self, captions: list[str]) -> list[tuple[str, str] | None]:
        raise NotImplementedError

    def side_log(self, output: str) -> Stage | None:
        """A stage that logs what this filter adds to the rows it judged (into `output`), or None."""
        return None

    def side_counts(self, output: str) -> dict | None:
        """What that log counts, for the manifest (None: no log)."""
        return None

    def process(self, batch: pa.Table) -> pa.Table:
        if not self.enabled or batch.num_rows == 0:
            return batch
        todo = pc.is_null(batch.column(S.REASON)).to_numpy(zero_copy_only=False)
        if not todo.any():
            return batch
        rows = [i for i, t in enumerate(todo) if t]
        verdicts = self.judge(batch.column(S.CAPTION).take(pa.array(rows)).to_pylist())
        return mark(batch, dict(zip(rows, verdicts)))


def mark(batch: pa.Table, verdicts: dict[int, tuple[str, str] | None]) -> pa.Table:
    """`batch` with reason/detail set on the rows whose verdict is not None."""
    hits = {i: v for i, v in verdicts.items() if v is not None}
    if not hits:
        return batch
    reasons, details = batch.column(S.REASON).to_pylist(), batch.column(S.DETAIL).to_pylist()
    for i, (reason, detail) in hits.items():
        reasons[i], details[i] = reason, detail
    batch = batch.set_column(batch.schema.get_field_index(S.REASON), S.REASON, pa.array(reasons, pa.string()))
    return batch.set_column(batch.schema.get_field_index(S.DETAIL), S.DETAIL, pa.array(details, pa.string()))


@dataclass(frozen=True)
class ExactStep:
    """A distributed exact-duplicate step: rows with equal `key` form a group, all but the first by
    pos lose it with `reason` and "duplicate of id <first's id>" (curate.dedup's rule)."""

    key: str
    reason: str


@dataclass(frozen=True)
class NearStep:
    """A distributed near-duplicate step over the `minhash` key column: LSH bands, candidate pairs
    `max_bucket_span` deep in a bucket, verified at `threshold`, the smallest id of a group kept
    (curate.near_dup's rule)."""

    threshold: float
    bands: int
    max_bucket_span: int


@dataclass
class Deduplicator(Stage):
    """A corpus-level step: every row that passed the filters before it gives keys (`key_columns`,
    in the pre-pass's tasks); all keys together decide which rows lose a group (`losers`: pos,
    reason, detail). Deduplicators run in config order, each on the rows the ones before kept.

    For inputs too big for the driver, `shuffle_steps` says the same decision as keyed-shuffle
    steps (ExactStep, NearStep) that factory/engine/dist_dedup.py runs across workers; None: this
    deduplicator has no distributed form (the pre-pass then refuses a distributed run in one line)."""

    enabled: bool = True

    def key_columns(self, captions: list[str]) -> dict[str, pa.Array]:
        """Columns this deduplicator needs beside id, pos and norm_hash (which every key row has)."""
        return {}

    def losers(self, keys: pa.Table) -> pa.Table:
        raise NotImplementedError

    def shuffle_steps(self) -> list[ExactStep | NearStep] | None:
        """The distributed form of `losers` (same rows, same details); [] when disabled."""
        return None
