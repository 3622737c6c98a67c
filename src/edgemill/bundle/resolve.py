"""Which wheels a bundle needs: the requirement closure, with markers evaluated for the device.

``pip download --platform`` picks wheels for the device but evaluates environment markers
(``python_version < "3.11"``, ``platform_machine == "aarch64"``) for the machine it runs on. This
pure core walks the wheels' own ``Requires-Dist`` with the device's marker values and says what is
needed, what is missing (to fetch in another round) and what pip fetched for the host alone.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from ..errors import UserError
from .target import DeviceTarget


class BadWheelError(UserError):
    """A file in the wheel folder that is not a readable wheel."""


@dataclass(frozen=True)
class WheelInfo:
    filename: str
    name: NormalizedName
    version: Version
    requires: tuple[str, ...]  # Requires-Dist lines, markers included
    tags: frozenset[Tag]


@dataclass(frozen=True)
class Missing:
    requirement: str  # as declared, without its marker: "tomli>=2"
    needed_by: str  # "edgemill 0.1.0", or "the bundle" for a root
    found: str | None = None  # a version present that does not satisfy it


@dataclass(frozen=True)
class Resolution:
    needed: tuple[WheelInfo, ...]
    missing: tuple[Missing, ...]
    unused: tuple[WheelInfo, ...]  # present but not needed on the device (or a second version)


def read_wheel(path: Path) -> WheelInfo:
    """Name, version, tags and requirements of a wheel file, from its name and its METADATA."""
    try:
        name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise BadWheelError("not a wheel file name", value=path.name, fix="remove it from the wheel folder") from exc
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = next((n for n in archive.namelist()
                             if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if metadata is None:
                raise BadWheelError("wheel without a .dist-info/METADATA", value=path.name,
                                    fix="rebuild the wheel (pip wheel) or remove it")
            text = archive.read(metadata).decode("utf-8")
    except zipfile.BadZipFile as exc:
        raise BadWheelError("damaged wheel (not a zip file)", value=str(path),
                            fix="download it again or remove it") from exc
    headers = HeaderParser().parsestr(text)
    return WheelInfo(path.name, name, version, tuple(headers.get_all("Requires-Dist") or ()), frozenset(tags))


def supported_tags(target: DeviceTarget) -> frozenset[Tag]:
    """Every wheel tag the device's CPython accepts (what pip on the device will check)."""
    platforms = target.pip_platforms()
    version = (target.python[0], target.python[1])
    return frozenset(cpython_tags(version, platforms=platforms)) | frozenset(
        compatible_tags(version, interpreter=f"cp{version[0]}{version[1]}", platforms=platforms))


def resolve(roots: Sequence[str], wheels: Iterable[WheelInfo], environment: Mapping[str, str]) -> Resolution:
    """The closure of ``roots`` over ``wheels`` for a device with these marker values.

    Markers are evaluated with the device's ``environment`` and the extras requested of the wheel
    that declares them. Where a name has several wheels, the newest is used and the others are unused.
    """
    by_name: dict[NormalizedName, WheelInfo] = {}
    extra: list[WheelInfo] = []
    for candidate in sorted(wheels, key=lambda w: (w.name, w.version), reverse=True):
        if candidate.name in by_name:
            extra.append(candidate)
        else:
            by_name[candidate.name] = candidate
    needed: dict[NormalizedName, WheelInfo] = {}
    missing: dict[str, Missing] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    queue: list[tuple[str, frozenset[str], str]] = [(r, frozenset(), "the bundle") for r in roots]
    while queue:
        line, parent_extras, needed_by = queue.pop(0)
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BadWheelError(f"unreadable requirement in {needed_by}", value=line,
                                fix="rebuild that wheel; its metadata is malformed") from exc
        contexts = [{**environment, "extra": e} for e in sorted(parent_extras or {""})]
        if req.marker is not None and not any(req.marker.evaluate(c) for c in contexts):
            continue
        name = canonicalize_name(req.name)
        wheel = by_name.get(name)
        bare = str(Requirement(f"{req.name}{req.specifier}"))
        if wheel is None or not req.specifier.contains(wheel.version, prereleases=True):
            missing.setdefault(bare, Missing(bare, needed_by, None if wheel is None else str(wheel.version)))
            continue
        needed[name] = wheel
        key = (name, frozenset(canonicalize_name(e) for e in req.extras))
        if key in seen:
            continue
        seen.add(key)
        for dep in wheel.requires:
            queue.append((dep, key[1], f"{wheel.name} {wheel.version}"))
    unused = [w for w in by_name.values() if w.name not in needed] + extra
    return Resolution(tuple(sorted(needed.values(), key=lambda w: w.name)), tuple(missing.values()),
                      tuple(sorted(unused, key=lambda w: w.filename)))
