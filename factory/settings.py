"""The config's fixed keys as typed dataclasses: Hydra checks types and unknown keys when it
composes, `Config.check` checks ranges when the run starts, each in one line that names the key.

The stage nodes (`model`, `scorer`, every child of `curate`) are typed by their stage classes
instead (factory/registry.py), and `resources.<pool>` by `Pool` when the pipeline is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import II

from factory.checks import number
from factory.errors import SettingError
from factory.export import check_exports
from factory.io.write import check_image_format
from factory.select import check_select


@dataclass
class SynthSettings:
    repeat: int = 1  # images per caption; the best one competes in selection
    steps: int = II("model.steps")
    guidance: float = II("model.guidance")
    seed: int = 0  # with (id, sample) gives each image's seed: reruns reproduce images
    batch_size: int = II("model.batch_size")
    negative_prompt: str = ""
    # Several generators in one run: conf/model/ names, each its own pool (the key `generators.<name>`;
    # per-generator overrides as generators.<name>.steps=20). null: the one generator `model`.
    generators: Optional[List[str]] = None

    def check(self) -> None:
        if self.generators is not None and len(set(self.generators)) != len(self.generators):
            raise SettingError("synth.generators", f"={list(self.generators)} names a generator twice")
        for key in ("repeat", "steps", "batch_size"):
            number(f"synth.{key}", getattr(self, key), whole=True, low=1)
        number("synth.guidance", self.guidance, low=0)
        number("synth.seed", self.seed, whole=True)


@dataclass
class ScoreSettings:
    lam: float = 0.5  # score = clip_score + lam * ssim
    prefix: str = "A photo depicts "
    ssim_size: int = 768
    ssim_low: int = 336
    batch_size: int = 16  # pairs per scoring call (also the rows per candidates file)

    def check(self) -> None:
        number("score.lam", self.lam, low=0)
        number("score.ssim_size", self.ssim_size, whole=True, low=7)
        number("score.ssim_low", self.ssim_low, whole=True, low=7)
        number("score.batch_size", self.batch_size, whole=True, low=1)


@dataclass
class SelectSettings:
    k: Optional[int] = 100  # pairs to keep (exact global top-k)
    fraction: Optional[float] = None  # or a fraction of the curated captions with a usable image (overrides k)
    best_by: str = "score"  # with synth.repeat > 1: the column that picks each caption's best sample

    def check(self) -> None:
        check_select(self.k, self.fraction, self.best_by)


@dataclass
class ImageSettings:
    format: str = "png"  # png | webp | jpeg, for candidates/ and dataset/
    quality: int = 95  # webp/jpeg only

    def check(self) -> None:
        check_image_format(self.format)
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise SettingError("image.quality", f" must be a whole number in [1, 100], got {self.quality!r}")


@dataclass
class RaySettings:
    address: Optional[str] = None  # null: RAY_ADDRESS (set by `ray job submit`) or a new local Ray; 'local': a new local Ray always; 'auto': a cluster running here
    num_cpus: Optional[float] = None  # local Ray only
    dashboard: bool = False  # local Ray only
    block_size_mb: float = 128
    local_scan_mb: float = 16  # inputs up to this size are scanned in the driver, not in Ray tasks
    local_select_mb: float = 64  # candidates/ up to this size is filtered into dataset/ in the driver
    progress_bars: bool = True
    worker_logs: Optional[bool] = None  # workers' output on the driver's console; null: only with a terminal
    wait_for_min_actors_s: int = 0  # 0: pools start while reading goes on; >0: fail if a pool is not up within this
    max_actor_init_deaths: int = 3  # actors that may die while loading (a lost node) before the run fails

    def check(self) -> None:
        number("ray.block_size_mb", self.block_size_mb, low=1)
        number("ray.num_cpus", self.num_cpus, low=1, nullable=True)


@dataclass
class ResumeSettings:
    allow_config_change: bool = False
    take_over: bool = False  # start although output/.factory-run.json says another run is alive there


@dataclass
class ExportSettings:
    llava: bool = False  # llava.json + images/: LLaVA's pretraining format
    llava_instructions: Optional[str] = None  # a YAML list of instructions; null = conf/export/llava_instructions.yaml
    webdataset: bool = False  # wds/shard-%06d.tar
    shard_size: int = 1000
    hf: bool = False  # README.md: a Hub dataset card

    def check(self) -> None:
        check_exports(self)

    def any(self) -> bool:
        return self.llava or self.webdataset or self.hf


@dataclass
class ReportSettings:
    enabled: bool = True


@dataclass
class EstimateSettings:
    seconds_per_image: Optional[float] = None  # null: time synthesis + scoring on this machine
    image_bytes: Optional[float] = None
    gpus: float = 1
    sample_rows: int = 2000
    calibration_batches: int = 1
    device: Optional[str] = None  # e.g. h200: seconds per image from benchmarks/RESULTS.md's figures for it

    def check(self) -> None:
        number("estimate.seconds_per_image", self.seconds_per_image, low=0, nullable=True, above=True)
        number("estimate.gpus", self.gpus, low=0, above=True)


@dataclass
class Pool:
    """resources.<pool>: an actor pool's size and what each actor asks for (null: the stage's own declaration)."""

    actors: int = 1  # fixed pool size, or the minimum with max_actors
    max_actors: Optional[int] = None  # > actors: Ray Data grows the pool up to this
    num_gpus: Optional[float] = None
    num_cpus: Optional[float] = None
    torch_threads: Optional[int] = None
    memory_gb: Optional[float] = None

    def check(self, key: str) -> None:
        number(f"{key}.actors", self.actors, whole=True, low=1)
        number(f"{key}.max_actors", self.max_actors, whole=True, low=1, nullable=True)
        number(f"{key}.num_cpus", self.num_cpus, low=0, nullable=True)
        number(f"{key}.num_gpus", self.num_gpus, low=0, nullable=True)
        number(f"{key}.torch_threads", self.torch_threads, whole=True, low=1, nullable=True)
        number(f"{key}.memory_gb", self.memory_gb, low=0, nullable=True)


@dataclass
class Config:
    """The whole config. `model`, `scorer` and `curate.*` are stage nodes; `resources` holds
    `cpu_task_cpus` and one `Pool` per actor pool."""

    input: Optional[str] = None  # captions: a file, folder or glob, local or URI; null = the bundled sample
    output: str = "runs/default"  # the run's folder, local or URI; running again on it resumes
    progress_every_s: float = 60  # a progress line in the log this often; 0: none
    model: Any = None
    generators: Any = field(default_factory=dict)  # filled from synth.generators (factory/config.py)
    scorer: Any = None
    curate: Any = field(default_factory=dict)
    synth: SynthSettings = field(default_factory=SynthSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    resources: Any = field(default_factory=dict)
    ray: RaySettings = field(default_factory=RaySettings)
    resume: ResumeSettings = field(default_factory=ResumeSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    estimate: EstimateSettings = field(default_factory=EstimateSettings)

    def check(self) -> None:
        """Every range check of the fixed keys (their types OmegaConf checked when composing)."""
        number("progress_every_s", self.progress_every_s, low=0)
        number("resources.cpu_task_cpus", (self.resources or {}).get("cpu_task_cpus", 0.25), low=0, above=True)
        for part in (self.synth, self.score, self.select, self.image, self.ray, self.export, self.estimate):
            part.check()
