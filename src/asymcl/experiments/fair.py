"""Fair comparisons by construction (method.md section 7).

A table that says which loss wins is only worth reading when every row had the same chance. The
comparison builder (:func:`comparison_spec`), used by ``asymcl reproduce`` and ``asymcl compare``,
gives every method in the table:

* **the same number of validation-scored settings** (the *budget*, one number per comparison).
  Each method draws them from its own search space, declared once in its registry entry
  (:attr:`asymcl.training.methods.Method.search_space`: CE and LA their learning rate and weight
  decay, LA also tau; the contrastive losses their temperature, gamma, eta and learning rate; the
  probe its C). The first setting is the space's default; the others are a seeded random draw from
  the rest of the space (random search: with a small budget it covers a space better than a
  coarse grid, Bergstra & Bengio 2012). The seed is the method's name, so a method draws the same
  settings in every comparison and a new method inherits the rule with no change here;
* **the same classifier input**: ``stage2.augment`` is one base value that every method's final
  classifier follows (clean features or augmented views);
* **the same training epochs**: an end-to-end baseline trains ``stage1.epochs + stage2.epochs``
  epochs, as many as a two-stage method's two stages together, with the best epoch chosen on
  validation like every stage;
* **the same levers, or none**: a base config that switches on a lever which only some methods can
  use (joint schedule, stage-1 sampler, memory queue) is refused.

The runs of each (method, setting) are repeated over the shared ``grid`` (seeds, imbalance
profiles); the report chooses each method's setting on mean validation UA and prints the budget.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asymcl.errors import ConfigError
from asymcl.training.methods import REGISTRY, Relative, get_method

#: Keys whose non-default value only some methods can use: a fair comparison sets none of them.
ONE_SIDED_LEVERS = {"schedule": "two_stage", "stage1.sampler": "random", "loss.memory_size": 0}


def _base_value(key: str, base: Mapping[str, Any]) -> Any:
    if key in base:
        return base[key]
    from asymcl.training.config import SCHEMA

    return SCHEMA[key][0]


def method_space(method: str, base: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """``{dotted key: candidate values}`` of ``method``'s search space, relative values resolved
    against ``base`` (flat dotted keys; a key it does not set has the run config's default)."""
    space: dict[str, tuple[Any, ...]] = {}
    for key, values in get_method(method).space.items():
        if isinstance(values, Relative):
            values = values.values(float(_base_value(key, base)))
        space[key] = tuple(dict.fromkeys(values))  # a relative draw may repeat a value
    return space


def method_settings(method: str, budget: int, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``budget`` distinct settings of ``method``: the space's default first, then a draw seeded by
    the method's name. A space smaller than the budget is a :class:`ConfigError` (giving that
    method fewer settings than the others is what this module exists to prevent)."""
    if budget < 1:
        raise ConfigError(f"a comparison's budget is the number of settings per method, at least 1; got {budget}")
    space = method_space(method, base)
    keys = list(space)
    points = (
        [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]
        if keys
        else [{}]
    )
    if len(points) < budget:
        raise ConfigError(
            f"method {method} has {len(points)} setting(s) in its search space, fewer than the budget of {budget} per "
            f"method; lower the budget to {len(points)} or leave {method} out (every method gets the same number)"
        )
    rng = np.random.default_rng(zlib.crc32(method.encode()))
    rest = [points[i] for i in 1 + rng.permutation(len(points) - 1)]
    return [points[0], *rest][:budget]


def check_levers(base: Mapping[str, Any]) -> None:
    for key, neutral in ONE_SIDED_LEVERS.items():
        if key in base and base[key] != neutral:
            raise ConfigError(
                f"{key}={base[key]!r} in a comparison's base config applies to the contrastive methods only, "
                "which would give them a lever the baselines lack; compare levers with `asymcl sweep` "
                f"instead, or remove {key}"
            )


def equal_epochs(method: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """The per-method overrides that give it the same epochs as the others (see the module docstring)."""
    if get_method(method).end_to_end:
        return {"stage1.epochs": int(_base_value("stage1.epochs", base)) + int(_base_value("stage2.epochs", base))}
    return {}


def fair_settings(methods: Sequence[str], budget: int, base: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{method: settings}`` for a sweep file's ``settings`` (the same ``budget`` for each)."""
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose among {', '.join(REGISTRY)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is listed twice in {list(methods)}")
    check_levers(base)
    return {
        method: [{**setting, **equal_epochs(method, base)} for setting in method_settings(method, budget, base)]
        for method in methods
    }


def comparison_spec(
    name: str,
    description: str,
    base: Mapping[str, Any],
    methods: Sequence[str],
    budget: int,
    grid: Mapping[str, list[Any]],
) -> dict[str, Any]:
    """A sweep mapping (base, shared grid, per-method settings) that compares ``methods`` fairly."""
    if "method" in grid:
        raise ConfigError("a comparison's methods come from its method list, not from a grid key 'method'")
    return {
        "name": name,
        "description": description,
        "base": dict(base),
        "grid": {k: list(v) for k, v in grid.items()},
        "settings": fair_settings(list(methods), budget, base),
    }
