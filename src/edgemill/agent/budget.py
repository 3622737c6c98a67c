"""Which idle models to unload so a new one fits the memory budget: a pure decision, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """What the decision needs to know about one loaded model."""

    name: str
    memory_bytes: int
    last_used: float  # monotonic seconds; smaller is older
    in_flight: int


def choose_evictions(residents: Sequence[Resident], needed: int, budget: int) -> list[str] | None:
    """The least-recently-used idle models whose removal makes ``needed`` bytes fit in ``budget``.

    Returns ``[]`` when it already fits, the names to unload (oldest first) when evicting idle models
    is enough, and ``None`` when even unloading every idle model would not make room. A model with
    requests in flight is never chosen.
    """
    used = sum(r.memory_bytes for r in residents)
    if used + needed <= budget:
        return []
    chosen: list[str] = []
    for resident in sorted((r for r in residents if r.in_flight == 0), key=lambda r: r.last_used):
        chosen.append(resident.name)
        used -= resident.memory_bytes
        if used + needed <= budget:
            return chosen
    return None
