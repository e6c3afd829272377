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
    overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra", "++hydra"))]
    try:
        cfg = compose(overrides)
    except Exception as exc:  # noqa: BLE001 (only Hydra's and OmegaConf's are ours to word)
        return override_error(exc)
    return unknown_added_key(overrides, cfg)


def _is_group(key: str) -> bool:
    return (Path(CONF_DIR) / key.replace(".", "/")).is_dir()


def unknown_added_key(overrides: list[str], cfg: dict) -> str | None:
    """`+key=value` (or `++`) that adds a key no code reads, e.g. `+select.kk=3`: the error line, or None.

    Hydra adds any key it is given with `+`, so a typo would be silently ignored. A key may be added
    only to an open map, one that is empty without it (`curate.llm.engine_kwargs`); `+group=option`
    (`+experiment=fast`) is a config group, not a key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and not _is_group(o.key_or_group)]
    if not added:
        return None
    try:
        without = compose([o.input_line for o in parsed if o not in added])
    except Exception as exc:  # noqa: BLE001 (e.g. ++a.b=1 with a.b=2: a key set only by the additions)
        return override_error(exc)
    for o in added:
        node, path = without, o.key_or_group.split(".")
        for depth, name in enumerate(path):
            if not isinstance(node, dict) or not node:
                break  # a value, null or an open map: Hydra's own checks, or anything goes
            if name not in node:
                where = ".".join(path[:depth]) or "the top level"
                keys = sorted(node)
                known = ", ".join(keys[:16]) + (", …" if len(keys) > 16 else "")
                return (f"'{o.input_line}' adds a key that nothing reads: {where} has no '{name}' "
                        f"(its keys: {known}) (python -m factory --cfg job prints every key)")
            node = node[name]
    return None
