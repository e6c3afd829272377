"""Refuse pickled weight files that would run code, on the driver, before anything loads them.

torch.load(weights_only=True) refuses them too, but only inside an actor, whose failure Ray then
retries and words vaguely. Here the pickle's opcodes are read (never executed): a weight file may
name only the few globals that rebuild tensors and plain containers.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import IO

from factory.errors import SettingError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
LEGACY_PICKLES = 5
# What a state dict saved by torch.save may name (torch.serialization's own weights-only allow-list, in short).
SAFE_MODULES = ("torch", "collections", "numpy.core.multiarray", "numpy._core.multiarray", "numpy", "_codecs", "builtins")
SAFE_BUILTINS = {"set", "frozenset", "bytearray", "slice", "complex", "int", "float", "str", "bytes", "tuple", "list", "dict"}


def pickles_in(stream: IO[bytes]) -> list[str]:
    """The globals (module.name) a pickle stream names, from its opcodes (read up to its STOP)."""
    names, strings = [], []
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
    return names


def unsafe(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if module == "builtins" or module == "__builtin__":
        return attr not in SAFE_BUILTINS
    if module.startswith("torch") and (".ops" in module or attr in ("load", "save", "hub")):
        return True
    return not any(module == m or module.startswith(m + ".") for m in SAFE_MODULES)


def names_in_file(path: Path) -> list[str]:
    """The globals a torch checkpoint's pickles name: data.pkl of the zip format, or the legacy
    file's leading pickles (its tensor bytes follow and are never read). A plain pickle file is its
    first stream."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [n for member in z.namelist() if member.endswith(".pkl") for n in pickles_in(io.BytesIO(z.read(member)))]
    names = []
    with open(path, "rb") as f:  # legacy torch.save: magic, protocol, system info, the object, storage keys
        for _ in range(LEGACY_PICKLES):
            names += pickles_in(f)
            if not f.peek(1):
                break
    return names


def check_weight_file(path: str | Path, key: str) -> None:
    """SettingError(key) when a local pickled weight file names code beyond tensors and containers."""
    p = Path(path)
    if p.suffix not in PICKLE_SUFFIXES or not p.is_file():
        return
    try:
        bad = sorted({n for n in names_in_file(p) if unsafe(n)})
    except Exception as exc:  # noqa: BLE001 (not a pickle at all: torch.load will say so)
        raise SettingError(key, f"={path}: not a readable weight file ({type(exc).__name__}: {exc})") from None
    if bad:
        raise SettingError(key, f"={path} is a pickle that would run code when loaded ({', '.join(bad[:3])}): refused; "
                           "load only weights you trust, as safetensors")


def check_weight_folder(folder: str | Path, key: str) -> None:
    """check_weight_file for every pickled weight file below a local model folder."""
    root = Path(folder)
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            if f.suffix in PICKLE_SUFFIXES:
                check_weight_file(f, key)
