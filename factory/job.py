"""A job: the typed settings, the resolved config the manifest records, and the declared pipeline,
all checked before anything runs."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from factory.config import plain
from factory.pipeline import Pipeline
from factory.settings import Config


@dataclass
class Job:
    settings: Config
    config: dict  # resolved plain containers: picklable, and what manifest.json records
    pipeline: Pipeline


def load_job(cfg: DictConfig) -> Job:
    """Check every setting (ranges, stage nodes, pools) and build the pipeline: a SettingError in
    one line for the first that cannot work."""
    settings = OmegaConf.to_object(cfg)
    settings.check()
    config = plain(cfg)
    return Job(settings, config, Pipeline.from_config(config, settings))
