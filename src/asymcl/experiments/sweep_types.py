"""The types a sweep is made of, apart from the code that parses and runs them.

:mod:`asymcl.experiments.sweep` (parsing, naming, running) and :mod:`asymcl.experiments.workers`
(the shared run loop) both use them; here, neither imports the other for its annotations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What runs one point: ``runner(resolved nested config, run directory) -> metrics``.
Runner = Callable[[dict, Path], dict]
#: ``resolver(flat overrides) -> resolved nested config``.
Resolver = Callable[[dict], dict]


@dataclass
class SweepSpec:
    """A validated sweep file: ``base`` and ``grid`` hold dotted keys."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    #: method -> its list of settings (dotted key -> value); empty: the methods come from ``grid``.
    settings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "base": self.base, "grid": self.grid}
        if self.search:
            out["search"] = self.search
        if self.settings:
            out["settings"] = self.settings
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its directory name and the config values it sets on top of ``base``."""

    name: str
    values: tuple[tuple[str, Any], ...]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.values)
