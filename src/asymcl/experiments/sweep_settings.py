"""A sweep file's ``settings``: each method's own list of settings, run over the shared ``grid``.

Kept apart from :mod:`asymcl.experiments.sweep` (the grid, naming and running) because it is the
one part a fair comparison (:mod:`asymcl.experiments.fair`) writes, and to keep both readable.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError
from asymcl.experiments.runs import METHOD_KEY, METHODS
from asymcl.training.config import flatten


def parse_settings(
    raw: Any,
    grid: Mapping[str, list[Any]],
    check_key: Callable[[str, str], None],
    check_value: Callable[[str, Any], None],
) -> dict[str, list[dict[str, Any]]]:
    """``settings``: method -> non-empty list of mappings of dotted keys (see the module docstring)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            "sweep 'settings': expected a mapping of method -> list of settings, e.g. "
            f"{{{METHODS[-1]}: [{{loss.temperature: 0.1}}]}}"
        )
    if METHOD_KEY in grid:
        raise ConfigError(f"sweep: give the methods either as grid key {METHOD_KEY!r} or as 'settings', not both")
    settings: dict[str, list[dict[str, Any]]] = {}
    for method, items in raw.items():
        if method not in METHODS:
            raise ConfigError(f"sweep 'settings': unknown method {method!r} (allowed: {', '.join(METHODS)})")
        if not isinstance(items, list) or not items:
            raise ConfigError(f"sweep 'settings' of {method}: expected a non-empty list of mappings, got {items!r}")
        parsed = []
        for item in items:
            if not isinstance(item, Mapping):
                raise ConfigError(
                    f"sweep 'settings' of {method}: each setting is a mapping of config keys, got {item!r}"
                )
            flat = flatten(dict(item))
            for key, value in flat.items():
                check_key(f"sweep 'settings' of {method}", key)
                if key in grid or key == METHOD_KEY:
                    raise ConfigError(f"sweep 'settings' of {method}: {key!r} is also a grid key; set it in one place")
                if isinstance(value, list):
                    raise ConfigError(
                        f"sweep 'settings' of {method}: {key!r} takes one value per setting, got {value!r}"
                    )
                check_value(f"sweep 'settings' of {method}, key {key!r}", value)
            parsed.append(flat)
        if len({json.dumps(p, sort_keys=True) for p in parsed}) != len(parsed):
            raise ConfigError(f"sweep 'settings' of {method}: a setting is listed twice")
        settings[str(method)] = parsed
    return settings


def grid_values(spec, keys: list[str]):
    """(values, the keys that name the point) of every combination, ``settings`` included.

    A setting key names the run when it is in the method's search space or varies between the
    method's settings; a key every setting of the method shares outside its space (the epochs a
    fair comparison gives an end-to-end baseline) is applied but left out of the name."""
    from asymcl.training.methods import REGISTRY

    combinations = [
        dict(zip(keys, combination, strict=True)) for combination in itertools.product(*(spec.grid[k] for k in keys))
    ]
    if not spec.settings:
        for values in combinations:
            yield values, keys
        return
    # One order of every setting key of every method, so that names are a function of the values.
    setting_keys = sorted({key for items in spec.settings.values() for item in items for key in item})
    for method, items in spec.settings.items():
        space = set(REGISTRY[method].space) if method in REGISTRY else set()
        varying = {key for key in setting_keys if len({json.dumps(item.get(key)) for item in items}) > 1}
        named = [key for key in setting_keys if key in space or key in varying]
        for item in items:
            for values in combinations:
                yield {**values, METHOD_KEY: method, **item}, [*keys, METHOD_KEY, *named]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def split_stale_runs(runs: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(kept, stale) of finished runs: a run is stale when the ``sweep.yaml`` of its folder gives its
    method ``settings`` and the run's values of those keys are none of them.

    A comparison's sweep file is rewritten when its settings are drawn anew (a changed draw rule, a
    new budget) while the folder keeps the runs of the old settings; a report that read them too
    would give those methods more validation-scored settings than the others. Runs of a folder
    without a sweep file, or of a method the settings do not name, are kept.
    """
    import yaml

    settings_of: dict[Path, Mapping[str, Any]] = {}
    kept: list[Any] = []
    stale: list[Any] = []
    for run in runs:
        folder = Path(run.path).parent
        if folder not in settings_of:
            settings_of[folder] = {}
            sweep_file = folder / "sweep.yaml"
            if sweep_file.is_file():
                try:
                    raw = yaml.safe_load(sweep_file.read_text())
                except yaml.YAMLError:
                    raw = None
                if isinstance(raw, Mapping) and isinstance(raw.get("settings"), Mapping):
                    settings_of[folder] = {
                        str(method): [flatten(dict(item)) for item in items if isinstance(item, Mapping)]
                        for method, items in raw["settings"].items()
                        if isinstance(items, list)
                    }
        items = settings_of[folder].get(str(run.config.get(METHOD_KEY)))
        if items and not any(all(_same(run.config.get(k), v) for k, v in item.items()) for item in items):
            stale.append(run)
        else:
            kept.append(run)
    return kept, stale


def stale_sentence(stale: Sequence[Any]) -> str:
    """What a report says of the runs :func:`split_stale_runs` left out ('' when none)."""
    if not stale:
        return ""
    folders = sorted({Path(run.path).parent.name for run in stale})
    return (
        f"{len(stale)} finished run(s) under {', '.join(folders)} have a setting that the folder's sweep.yaml no "
        "longer gives their method (an earlier draw of settings) and are left out, so that every method keeps "
        "the budget of settings the sweep file gives it."
    )
