"""The pass registry: every pass is found through the ``graphopt.passes`` entry-point group.

A third-party package adds a pass by declaring an entry point in that group; graphopt itself imports no pass.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib.metadata import entry_points

from graphopt.errors import PipelineError
from graphopt.pass_base import PassBase

__all__ = ["ENTRY_POINT_GROUP", "available_passes", "pass_class"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "graphopt.passes"


@lru_cache(maxsize=1)
def available_passes() -> dict[str, type[PassBase]]:
    """Registered passes by name, in entry-point name order; duplicate or mismatched names are refused."""
    found: dict[str, type[PassBase]] = {}
    origin: dict[str, str] = {}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            cls = point.load()
        except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not take graphopt down
            log.warning("cannot load pass %s from %s: %s", point.name, point.value, e)
            continue
        if not (isinstance(cls, type) and issubclass(cls, PassBase)):
            raise PipelineError(f"entry point '{point.name}' ({point.value}) is not a PassBase subclass")
        if cls.name != point.name:
            raise PipelineError(f"entry point '{point.name}' names a pass called '{cls.name}'")
        if point.name in found and origin[point.name] != point.value:
            raise PipelineError(f"two packages register pass '{point.name}': {origin[point.name]} and {point.value}")
        found[point.name] = cls
        origin[point.name] = point.value
    return found


def pass_class(name: str) -> type[PassBase]:
    """The registered pass called ``name``; ``PipelineError`` naming the known passes otherwise."""
    passes = available_passes()
    if name not in passes:
        known = ", ".join(passes) or "none registered"
        raise PipelineError(f"unknown pass '{name}' (known passes: {known})")
    return passes[name]
