"""Compose conf/ with Hydra into a typed config, and word what Hydra or OmegaConf refuse in one line.

The CLI, `estimate`, the tests and the benchmarks all compose through `compose`: the schemas of
the fixed keys (factory/settings.py) and of every built-in stage (factory/registry.py) are in
Hydra's ConfigStore first, so a wrong type or an unknown key fails here, before anything runs.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from factory.errors import user_error
from factory.io.redact import redact
from factory.paths import CONF_DIR
from factory.registry import register_schemas
from factory.settings import Config, Pool

NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=", "To append to your config",
         "Set the environment variable")


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    store.store(group="schema", name="pool", node=Pool)
    register_schemas()


def generator_groups(overrides: list[str]) -> list[str]:
    """`synth.generators=[a,b]` brings conf/model/a.yaml and b.yaml in as `generators.a` and
    `generators.b`: the config group overrides that do it."""
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.key_or_group == "synth.generators" and not o.is_delete():
            value = o.value()
            names = value if isinstance(value, list) else [] if value is None else [value]
            out += [f"+model@generators.{n}={n}" for n in names]
    return out


def compose(overrides: list[str] | None = None) -> DictConfig:
    """conf/config.yaml with `overrides`, typed (not yet resolved: interpolations stay live)."""
    register()
    overrides = list(overrides or [])
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = hydra_compose(config_name="config", overrides=overrides + generator_groups(overrides))
    with_hydra = "hydra" in cfg
    if with_hydra:
        OmegaConf.set_struct(cfg, False)
        cfg.pop("hydra")
        OmegaConf.set_struct(cfg, True)
    return cfg


def plain(cfg: DictConfig) -> dict:
    """The resolved config as plain containers: what the manifest records."""
    return OmegaConf.to_container(cfg, resolve=True)


def override_error(exc: BaseException) -> str | None:
    """Hydra's or OmegaConf's complaint about the overrides as one line; None for other errors."""
    if not type(exc).__module__.startswith(("hydra", "omegaconf")):
        return None
    lines = []
    while exc is not None:  # Hydra words the override, OmegaConf (its cause) the key
        lines += [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(NOISE)]
        exc = exc.__cause__
    return " ".join(lines) + " (python -m factory --cfg job prints every key)"


def print_refusal(exc: BaseException) -> int:
    """A user's error (a bad override, setting, input or output) as one redacted line on stderr,
    and the CLI's exit status 2; anything else is a bug and raises."""
    msg = override_error(exc) or user_error(exc)
    if msg is None:
        raise exc
    print(f"error: {redact(msg)}", file=sys.stderr)
    return 2


# Keys spelt otherwise before the stage contract: the old spelling gets one line naming the new.
RENAMED = {"curate.rules.perplexity": "curate.perplexity"}


def renamed_key(overrides: list[str]) -> str | None:
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        for old, new in RENAMED.items():
            if key == old or key.startswith(old + "."):
                return f"{key} is now {new + key[len(old):]} (the perplexity filter is a stage of its own)"
    return None


def check_overrides(overrides: list[str]) -> str | None:
    """Compose the command line's overrides once, before the run: the error line, or None."""
    if error := renamed_key(overrides):
        return error
    try:
        cfg = compose(overrides)
    except Exception as exc:  # noqa: BLE001 (only Hydra's and OmegaConf's are ours to word)
        return override_error(exc)
    return unknown_added_key(overrides, cfg)


def unknown_added_key(overrides: list[str], cfg: DictConfig) -> str | None:
    """`+key=value` (or `++`) that adds a key no code reads, e.g. `+select.kk=3`: the error line, or None.

    Hydra adds a key it is given with `+` even to a typed node, where nothing would read it. Keys
    may be added to the open maps (`curate`, `resources`, `curate.llm.engine_kwargs`), and
    `+group=option` (`+experiment=fast`) is a config group, not a key.
    """
    parsed = OverridesParser.create().parse_overrides(overrides)
    for o in parsed:
        if not (o.is_add() or o.is_force_add()) or (Path(CONF_DIR) / o.key_or_group.replace(".", "/")).is_dir():
            continue
        node, path = cfg, o.key_or_group.split(".")
        for depth, name in enumerate(path):
            typed = OmegaConf.get_type(node)
            if dataclasses.is_dataclass(typed) and name not in {f.name for f in dataclasses.fields(typed)}:
                where = ".".join(path[:depth]) or "the top level"
                keys = sorted(f.name for f in dataclasses.fields(typed))
                known = ", ".join(keys[:16]) + (", …" if len(keys) > 16 else "")
                return (f"'{o.input_line}' adds a key that nothing reads: {where} has no '{name}' "
                        f"(its keys: {known}) (python -m factory --cfg job prints every key)")
            node = node.get(name) if isinstance(node, DictConfig) else None
            if not isinstance(node, DictConfig):
                break
    return None
