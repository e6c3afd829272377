"""Compose conf/ outside the CLI (tests, benchmarks, the estimate command) into a plain dict."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out
