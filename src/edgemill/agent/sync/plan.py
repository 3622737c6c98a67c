"""What to do to reach the control plane's desired state: a pure decision over data, no I/O.

:func:`plan` compares the desired models with the loaded ones and the packages that already failed
here, and answers with actions: install a package, unload a model, or skip a package that failed
(it is not tried again until the desired package for that model changes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class DesiredModel:
    """One entry of the desired state (``DesiredModelOut`` on the wire)."""

    name: str
    version: str
    package_id: str
    size_bytes: int
    download_path: str  # relative to the server URL
    allow_rollback: bool = False  # the control plane ordered this older version
    deployment_id: int | None = None

    @classmethod
    def from_wire(cls, entry: Mapping[str, Any]) -> DesiredModel:
        """The entry from the server's JSON; ``ValueError`` when a field is missing or has the wrong type."""
        try:
            model = cls(name=entry["name"], version=entry["version"], package_id=entry["package_id"],
                        size_bytes=int(entry["size_bytes"]), download_path=entry["download_path"],
                        allow_rollback=bool(entry.get("allow_rollback", False)),
                        deployment_id=entry.get("deployment_id"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed desired model {entry!r}: {exc}") from None
        if not all(isinstance(v, str) and v for v in (model.name, model.package_id, model.download_path)) \
                or not model.download_path.startswith("/"):
            raise ValueError(f"malformed desired model {entry!r}: name, package_id and an absolute "
                             "download_path are required")
        return model


@dataclass(frozen=True)
class Install:
    """Download, verify, health-check and swap in ``model`` (beside what serves under its name now)."""

    model: DesiredModel


@dataclass(frozen=True)
class Unload:
    """Unload ``name`` (loaded by the sync, no longer desired) and delete its package file."""

    name: str


@dataclass(frozen=True)
class SkipFailed:
    """``package_id`` failed here before: leave ``name`` as it is (the old version keeps serving)."""

    name: str
    package_id: str


Action = Union[Install, Unload, SkipFailed]


def plan(desired: Sequence[DesiredModel], loaded: Mapping[str, str], failures: Collection[tuple[str, str]],
         managed: Collection[str] = ()) -> list[Action]:
    """The actions that take the device from ``loaded`` to ``desired``.

    ``loaded``: every model serving now, name -> package id. ``failures``: (model, package id) pairs
    that failed here. ``managed``: the models the sync loaded; only those are unloaded when no longer
    desired, even when no longer loaded (their files go too); a model an operator loaded through gRPC
    or standalone stays. Unloads come first, so
    their memory is free for the installs; then installs and skips in the desired order. A name listed
    twice in ``desired`` counts once, first entry wins.
    """
    wanted = first_per_name(desired)
    actions: list[Action] = [Unload(name) for name in sorted(managed) if name not in wanted]
    for name, model in wanted.items():
        if loaded.get(name) == model.package_id:
            continue
        if (name, model.package_id) in failures:
            actions.append(SkipFailed(name, model.package_id))
        else:
            actions.append(Install(model))
    return actions


def first_per_name(desired: Iterable[DesiredModel]) -> dict[str, DesiredModel]:
    wanted: dict[str, DesiredModel] = {}
    for model in desired:
        wanted.setdefault(model.name, model)
    return wanted


def still_relevant(tried: Iterable[tuple[str, str, bool]], desired: Sequence[DesiredModel]) -> set[tuple[str, str]]:
    """The failures to keep, as (model, package id): those whose desired entry is still the one that
    was tried, given as (model, package id, allow_rollback). The rest are forgotten, so a package is
    tried again once the control plane orders another one, or orders it as a rollback after it was
    refused as one."""
    wanted = {(m.name, m.package_id, m.allow_rollback) for m in first_per_name(desired).values()}
    return {(name, package) for name, package, rollback in tried if (name, package, rollback) in wanted}
