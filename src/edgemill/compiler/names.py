"""Input names as users write them: the package's own name, TensorFlow's ``name:0`` spelling, or the name
the source framework gave the tensor (``serving_default_image:0`` for a TFLite signature input ``image``),
which frontends record in ``source.details["names"]`` when they differ."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def resolve(name: str, known: Collection[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The package input ``name`` refers to, or None."""
    if name in known:
        return name
    if name.endswith(":0") and name[:-2] in known:
        return name[:-2]
    for package_name, source_name in (aliases or {}).items():
        if package_name in known and name in (source_name, source_name.removesuffix(":0")):
            return package_name
    return None
