"""Checks the wheels a device call carries, from their own metadata, against the device image.

    python benchmarks/device/check_wheels.py --list wheels.txt                  # the list alone (no wheels)
    python benchmarks/device/check_wheels.py --list wheels.txt --ray RAY.whl WHEEL...

The list: every line pinned (`name==version`), each name once, no torch or CUDA package (the image's
build must stay). With wheels: one wheel per listed name at its version, each installable on the
image's CPython 3.12 manylinux x86_64 (by its file name's tags), and every requirement of each
wheel (and of Ray's), under the image's markers, met by a carried wheel or by the image
(image_packages.txt; where the image's version is known, the specifier is checked too).
Prints one line per problem and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
# The image's interpreter and platform, for requirement markers (extras: none) and wheel tags.
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "implementation_version": "3.12.3", "extra": ""}
PLATFORMS = ["linux_x86_64"] + [f"manylinux_2_{m}_x86_64" for m in range(5, 40)] + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
# Never carried: they would shadow the image's CUDA build of torch.
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
# Declared but never imported on the image's Python: not carried, on purpose.
NOT_IMPORTED = {"importlib-metadata": "diffusers imports it only on Python < 3.8"}


def supported_tags() -> set[Tag]:
    return set(cpython_tags((3, 12), platforms=PLATFORMS)) | set(compatible_tags((3, 12), "cp312", PLATFORMS))


def read_list(path: Path) -> tuple[dict[str, str], list[str]]:
    """{canonical name: version} of the list, and its problems."""
    pins, problems = {}, []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec = line.split()[0]
        name, sep, version = spec.partition("==")
        where = f"{path.name}:{n}"
        if not sep or not version or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            problems.append(f"{where}: {spec!r} is not pinned as name==version")
            continue
        key = canonicalize_name(name)
        if key in pins:
            problems.append(f"{where}: {name} is listed twice")
        if NEVER.match(key):
            problems.append(f"{where}: {name} must not be carried (the image's torch/CUDA build stays)")
        pins[key] = version
    return pins, problems


def read_image(path: Path) -> dict[str, str | None]:
    """{canonical name: version or None} of the image's packages."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def wheel_requirements(path: Path) -> list[Requirement]:
    """The wheel's Requires-Dist lines that apply on the image (no extras)."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        fields = Parser().parsestr(z.read(meta).decode("utf-8"), headersonly=True)
    reqs = [Requirement(r) for r in fields.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(MARKERS)]


def unmet(req: Requirement, carried: dict[str, str], image: dict[str, str | None]) -> str | None:
    """Why `req` is not met on the image with the carried wheels, or None."""
    key = canonicalize_name(req.name)
    if key in NOT_IMPORTED:
        return None
    version = carried.get(key, image.get(key))
    if key not in carried and key not in image:
        return "neither carried nor in the image"
    if version is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
        return f"{'carried' if key in carried else 'the image has'} {version}"
    return None


def check_wheels(wheels: list[Path], pins: dict[str, str], image: dict[str, str | None], ray: Path | None = None) -> list[str]:
    problems, carried, tags = [], {}, supported_tags()
    for w in wheels + ([ray] if ray else []):
        name, version, _, wtags = parse_wheel_filename(w.name)
        if not wtags & tags:
            problems.append(f"{w.name}: no tag installable on CPython 3.12 manylinux x86_64")
        if NEVER.match(name):
            problems.append(f"{w.name}: must not be carried (the image's torch/CUDA build stays)")
        if name in carried:
            problems.append(f"{w.name}: a second wheel of {name} (pip --target stops on two)")
        carried[name] = str(version)
    for name, version in pins.items():
        if carried.get(name) != version:
            problems.append(f"{name}=={version} is listed but no such wheel is packed (found {carried.get(name)})")
    for name in set(carried) - set(pins) - ({canonicalize_name(parse_wheel_filename(ray.name)[0])} if ray else set()):
        problems.append(f"{name}: a wheel that the list does not name")
    for w in wheels + ([ray] if ray else []):
        for req in wheel_requirements(w):
            if (why := unmet(req, carried, image)) is not None:
                problems.append(f"{w.name} needs {req}: {why}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", type=Path, default=HERE / "wheels.txt")
    p.add_argument("--image", type=Path, default=HERE / "image_packages.txt")
    p.add_argument("--ray", type=Path, help="Ray's wheel: its requirements are checked too")
    p.add_argument("wheels", type=Path, nargs="*")
    a = p.parse_args(argv)
    pins, problems = read_list(a.list)
    if a.wheels or a.ray:
        problems += check_wheels(a.wheels, pins, read_image(a.image), a.ray)
    for line in problems:
        print(f"check_wheels: {line}")
    what = f"{len(a.wheels)} wheels" + (" and Ray's" if a.ray else "") if a.wheels or a.ray else f"{len(pins)} pins"
    print(f"check_wheels: {what}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
