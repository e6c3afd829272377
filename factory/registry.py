"""Stage classes as config: each built-in stage class is a Hydra schema (`/stage/<config_name>`,
its fields with their defaults and types plus `_target_`), and a config node with a `_target_`
becomes the stage object. A class of the user's own (`+curate.mine={_target_: pkg.Mine, ...}`)
needs no registration: its node is typed against the class when the pipeline is built.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from functools import cache

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from factory.errors import SettingError
from factory.stage import Stage

SCHEMA_GROUP = "stage"
# Where the built-in stages live: every module below is imported once, so each Stage subclass
# with a `config_name` of its own becomes a schema.
STAGE_PACKAGES = ("factory.curate", "factory.synth", "factory.score", "factory.io")


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


@cache
def stage_classes() -> dict[str, type[Stage]]:
    """The built-in stage classes by their config_name."""
    for package in STAGE_PACKAGES:
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{mod.name}")
    return {c.__dict__["config_name"]: c for c in _subclasses(Stage) if "config_name" in c.__dict__}


def dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@cache
def schema(cls: type[Stage]) -> type:
    """A dataclass of `_target_` and the stage's fields: what OmegaConf types a stage node by."""
    fields = [("_target_", str, dataclasses.field(default=dotted(cls)))]
    hints = typing.get_type_hints(cls)  # each field's type resolved where it was written
    for f in dataclasses.fields(cls):
        default = ({"default": f.default} if f.default is not dataclasses.MISSING
                   else {"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING else {})
        fields.append((f.name, hints[f.name], dataclasses.field(**default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def register_schemas() -> None:
    """Put every built-in stage's schema in Hydra's ConfigStore (conf/ files name them in their defaults)."""
    store = ConfigStore.instance()
    for name, cls in stage_classes().items():
        store.store(group=SCHEMA_GROUP, name=name, node=schema(cls))


def stage_class(node, key: str) -> type[Stage]:
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if not target:
        raise SettingError(key, " is not a stage: it needs _target_ (a Stage class, e.g. factory.curate.rules.CaptionRules)")
    try:
        cls = get_class(str(target))
    except Exception as exc:  # noqa: BLE001 (an import error of the user's module, a typo)
        raise SettingError(f"{key}._target_", f"={target!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise SettingError(f"{key}._target_", f"={target!r} is not a Stage (factory.stage.Stage)")
    return cls


def typed(node, key: str) -> DictConfig:
    """The node merged into its class's schema: defaults filled in, types and keys checked."""
    cls = stage_class(node, key)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema(cls)), node)
    except Exception as exc:  # OmegaConf's ValidationError / ConfigKeyError, worded by OmegaConf
        raise SettingError(key, f": {str(exc).splitlines()[0]}") from None


def build(node, key: str, bound: dict[str, tuple[str, object]] | None = None) -> Stage:
    """The stage a config node describes. `bound`: field → (config key, value) set from elsewhere
    in the config (synth.steps for a generator's steps); errors name that key."""
    cls = stage_class(node, key)
    kwargs = OmegaConf.to_container(typed(node, key), resolve=True)
    kwargs.pop("_target_")
    bound = bound or {}
    kwargs.update({name: value for name, (_, value) in bound.items()})
    try:
        return cls(**kwargs)
    except SettingError as exc:
        raise exc.under(bound[exc.key][0] if exc.key in bound else f"{key}.{exc.key}") from None


def config_keys(stage: Stage, key: str, bound: dict | None = None) -> dict[str, str]:
    """Field → the config key that sets it."""
    bound = bound or {}
    return {f.name: bound[f.name][0] if f.name in bound else f"{key}.{f.name}" for f in dataclasses.fields(stage)}
