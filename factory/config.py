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


NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=", "To append to your config",
         "Set the environment variable")


def override_error(exc: BaseException) -> str | None:
    """Hydra's or OmegaConf's complaint about the overrides as one line; None for other errors."""
    if not type(exc).__module__.startswith(("hydra", "omegaconf")):
        return None
    lines = []
    while exc is not None:  # Hydra words the override, OmegaConf (its cause) the key
        lines += [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(NOISE)]
        exc = exc.__cause__
    return " ".join(lines) + " (python -m factory --cfg job prints every key)"


def check_overrides(overrides: list[str]) -> str | None:
    """Compose the command line's overrides once, before the run: the error line, or None."""
    try:
        compose([o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))])
    except Exception as exc:  # noqa: BLE001 (only Hydra's and OmegaConf's are ours to word)
        return override_error(exc)
    return None
