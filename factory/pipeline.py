"""The declared pipeline: a fixed skeleton whose slots the config fills with stages.

    read → [filters before dedup] → duplicates → [caption filters] → rejects/
         → expand → [generator] → scorer → candidates/ → select → dataset/

Slots come from the config by `_target_`: every child of `curate` is a caption filter or a
deduplicator (by its class), `model` is the generator and `scorer` the scorer. What the rest of
the factory needs about the run (the resume fingerprint, the reasons that keep a resumed caption
out of selection, the pools and their GPUs) is derived here from the stages' declarations.
No Ray here: factory/engine turns the pipeline into Ray Data operators.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from factory.errors import SettingError
from factory.expand import ExpandSamples
from factory.io.write import CandidateWriter
from factory.registry import build, config_keys, stage_class
from factory.settings import Config, Pool
from factory.stage import CaptionFilter, Deduplicator, Stage

# Settings of the skeleton that a slot's stage takes from elsewhere in the config: field → key.
GENERATOR_FROM = {"steps": "synth.steps", "guidance": "synth.guidance", "negative_prompt": "synth.negative_prompt",
                  "batch_size": "synth.batch_size"}
SCORER_FROM = {"lam": "score.lam", "prefix": "score.prefix", "ssim_size": "score.ssim_size", "ssim_low": "score.ssim_low",
               "batch_size": "score.batch_size"}


@dataclass
class Slot:
    """A stage and the config key of each of its fields."""

    stage: Stage
    keys: dict[str, str]
    prefix: str | None = None  # a generator's: its fingerprint keys are generators.<name>.<field>

    def key(self, name: str) -> str:
        """The fingerprint key of a field."""
        return f"{self.prefix}.{name}" if self.prefix else self.keys[name]

    def fingerprint(self) -> dict:
        return {self.key(name): value for name, value in self.stage.params().items()}

    def spelling(self) -> dict:
        """Fingerprint key → the config key a user sets it by."""
        return {self.key(name): self.keys[name] for name in self.stage.params()}

    def defaults(self) -> dict:
        """What each fingerprinted key was before it existed: the field's default (a new setting's
        default must reproduce what the factory did without it)."""
        out = {}
        for f in dataclasses.fields(self.stage):
            if f.name in self.stage.speed_only or f.name not in self.keys:
                continue
            if f.default is not dataclasses.MISSING:
                out[self.key(f.name)] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # an empty dict or list, made afresh
                out[self.key(f.name)] = f.default_factory()
        return out


def lookup(cfg: dict, key: str):
    node = cfg
    for name in key.split("."):
        node = node[name]
    return node


def slot(node: dict, key: str, cfg: dict, bound_from: dict[str, str] | None = None) -> Slot:
    bound = {name: (k, lookup(cfg, k)) for name, k in (bound_from or {}).items()}
    stage = build(node, key, bound)
    return Slot(stage, config_keys(stage, key, bound))


def generator_slots(cfg: dict) -> list[Slot]:
    """`model`, or each of `generators` (synth.generators=[a,b]: conf/model/ entries named by their key)."""
    named = cfg.get("generators") or {}
    if not named:
        s = slot(cfg["model"], "model", cfg, GENERATOR_FROM)
        # synth.steps and the like default to model.steps (conf/config.yaml): changes are named model.*
        return [Slot(s.stage, config_keys(s.stage, "model"), f"generators.{s.stage.name}")]
    return [Slot(s.stage, s.keys, f"generators.{name}")
            for name, node in named.items() for s in [slot({**node, "name": name}, f"generators.{name}", cfg)]]


@dataclass
class Pipeline:
    filters: list[Slot]  # caption filters, in config order
    dedup: list[Slot]  # deduplicators, in config order
    generators: list[Slot]  # one or more, each its own pool
    scorer: Slot
    expand: Slot
    writer: Slot

    @classmethod
    def from_config(cls, cfg: dict, settings: Config) -> "Pipeline":
        """The pipeline a resolved plain config (and its typed settings) describes; refuses a stage
        node or pool that cannot work, in one line naming its key."""
        filters, dedup = [], []
        for name, node in cfg["curate"].items():
            s = slot(node, f"curate.{name}", cfg)
            if isinstance(s.stage, CaptionFilter):
                filters.append(s)
            elif isinstance(s.stage, Deduplicator):
                dedup.append(s)
            else:
                raise SettingError(f"curate.{name}._target_", f"={node['_target_']!r} is neither a caption filter nor a deduplicator")
        synth, image = settings.synth, settings.image
        generators = generator_slots(cfg)
        expand = ExpandSamples(repeat=synth.repeat, seed=synth.seed, generators=tuple(g.stage.name for g in generators))
        writer = CandidateWriter(image_format=image.format, quality=image.quality, batch_size=settings.score.batch_size)
        pipeline = cls(
            filters=filters, dedup=dedup, generators=generators,
            scorer=slot(cfg["scorer"], "scorer", cfg, SCORER_FROM),
            expand=Slot(expand, {"seed": "synth.seed"}),  # its other fields are speed-only
            writer=Slot(writer, {"image_format": "image.format", "quality": "image.quality"}),
        )
        pipeline.check_pools(cfg)
        return pipeline

    # ---- what the stages declare, put together ------------------------------------------------

    def early_filters(self) -> list[CaptionFilter]:
        """Filters that run before deduplication (in the pre-pass too)."""
        return [s.stage for s in self.filters if s.stage.enabled and s.stage.before_dedup]

    def late_filters(self) -> list[CaptionFilter]:
        """Filters that see only the captions deduplication kept (the model-based ones)."""
        return [s.stage for s in self.filters if s.stage.enabled and not s.stage.before_dedup]

    def deduplicators(self) -> list[Deduplicator]:
        return [s.stage for s in self.dedup if s.stage.enabled]

    @property
    def generator(self) -> Slot:
        """The first generator (the only one unless synth.generators lists several)."""
        return self.generators[0]

    def generator_names(self) -> list[str]:
        return [g.stage.name for g in self.generators]

    def sample_slots(self) -> list[Slot]:
        """The stages that make a sample what it is: their parameters are the resume fingerprint."""
        return [self.expand, *self.generators, self.scorer, self.writer]

    def fingerprint(self) -> dict:
        """One value per key; a generator's keys are generators.<name>.<field>, so that each
        generator of a run resumes on its own (a generator new to an output is free)."""
        return {k: v for s in self.sample_slots() for k, v in s.fingerprint().items()}

    def spelling(self) -> dict:
        """Fingerprint key → the config key that sets it (model.steps for a single generator)."""
        return {k: v for s in self.sample_slots() for k, v in s.spelling().items()}

    def fingerprint_defaults(self) -> dict:
        return {k: v for s in self.sample_slots() for k, v in s.defaults().items()}

    def curation_reasons(self) -> tuple[str, ...]:
        """Reasons of the filters after deduplication: a caption rejected for one of them in this run
        keeps its samples on disk out of selection (they passed the pre-pass, so ids are unique)."""
        return tuple(r for f in self.late_filters() for r in f.reasons)

    def model_stages(self) -> list[Stage]:
        """Every stage of this run with an actor pool of its own, in stream order."""
        stages = self.late_filters() + [g.stage for g in self.generators] + [self.scorer.stage]
        return [s for s in stages if s.engine() == "actors"]

    def stream_pools(self) -> list[Stage]:
        """The pools that hold their CPUs for the whole stream (after the repartition step)."""
        return [g.stage for g in self.generators] + [self.scorer.stage]

    def check_pools(self, cfg: dict) -> None:
        """resources.<pool> must name the pool of a configured stage (a typo would size nothing)."""
        nodes = [*(cfg.get("generators") or {}).values(), cfg["model"], cfg["scorer"], *cfg["curate"].values()]
        known = {stage_class(node, "").pool for node in nodes}
        for key, pool in cfg["resources"].items():
            if key == "cpu_task_cpus":
                continue
            if key not in known:
                raise SettingError(f"resources.{key}", f": no stage of this config has an actor pool of that name "
                                   f"(pools: {', '.join(sorted(k for k in known if k))})")
            as_pool(pool).check(f"resources.{key}")

    def describe(self) -> list[str]:
        """The stages that will run, in order, one line each (`python -m factory --cfg job`)."""
        lines = [f"{'filter (before dedup)':<22} {type(s).__name__:<18} {s.name}" for s in self.early_filters()]
        lines += [f"{'deduplicate':<22} {type(s).__name__:<18} {s.name}" for s in self.deduplicators()]
        lines += [f"{'filter':<22} {type(s).__name__:<18} {s.name}" for s in self.late_filters()]
        lines += [f"{'generate':<22} {type(g.stage).__name__:<18} {g.stage.name}" for g in self.generators]
        lines += [f"{'score':<22} {type(self.scorer.stage).__name__:<18} {self.scorer.stage.name}"]
        return lines


def as_pool(node) -> Pool:
    return node if isinstance(node, Pool) else Pool(**dict(node or {}))
