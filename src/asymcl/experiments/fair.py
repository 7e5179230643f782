"""Fair comparisons by construction (method.md section 7).

A table that says which loss wins is only worth reading when every row had the same chance. The
comparison builder (:func:`comparison_spec`), used by ``asymcl reproduce`` and ``asymcl compare``,
gives every method in the table:

* **the same number of validation-scored settings** (the *budget*, one number per comparison).
  Each method draws them from its own search space, declared once in its registry entry
  (:attr:`asymcl.training.methods.Method.search_space`: CE and LA their learning rate and weight
  decay, LA also tau; the contrastive losses their temperature, gamma, eta and learning rate; the
  probe its C). The first setting is the space's default;
* **the same draw of every key they share.** The others are a paired draw: each key's values come
  in one seeded order (the seed is the key's name; the default first, then a permutation of the
  rest, then further permutations once they run out), and a method's i-th setting takes the i-th
  value of each of its keys. So the i-th setting of CL, FCL, ACL and AFCL has the same temperature
  and learning rate, and FCL and AFCL the same gamma: AFCL's is CL's plus gamma and eta. With a draw
  per method, each method gets its own temperatures, and a loss can "win" by the temperature it
  happened to draw (issue 22's from-scratch cell: ACL beat CL by 3.9 points, and by
  -0.1 at ACL's temperature). Per key, the draw is a Latin hypercube: with a budget no larger than
  a key's values, no value repeats (random search over the space, Bergstra & Bengio 2012, with
  each key's values spread). Where two of a method's settings would coincide (a budget beyond
  its keys' lengths), the later one is replaced by the next unused point of the method's space in
  an order seeded by its keys, so methods with the same space still draw the same settings;
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
import math
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


def _key_order(key: str, size: int, length: int) -> list[int]:
    """Indices into a key's ``size`` candidates for the first ``length`` settings: 0 (the default),
    a permutation of the rest, then whole permutations. Seeded by the key's name alone, so every
    method that tunes the key takes the same value at the same setting."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    order = [0, *(1 + rng.permutation(size - 1)).tolist()]
    while len(order) < length:
        order += rng.permutation(size).tolist()
    return order[:length]


def method_settings(method: str, budget: int, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``budget`` distinct settings of ``method``: the space's default first, then the paired draw
    (the module docstring): setting i takes the i-th value of each key's order (:func:`_key_order`).
    A space smaller than the budget is a :class:`ConfigError` (giving that method fewer settings
    than the others is what this module exists to prevent)."""
    if budget < 1:
        raise ConfigError(f"a comparison's budget is the number of settings per method, at least 1; got {budget}")
    space = method_space(method, base)
    keys = list(space)
    size = math.prod(len(space[k]) for k in keys)
    if size < budget:
        raise ConfigError(
            f"method {method} has {size} setting(s) in its search space, fewer than the budget of {budget} per "
            f"method; lower the budget to {size} or leave {method} out (every method gets the same number)"
        )
    orders = {k: _key_order(k, len(space[k]), budget) for k in keys}
    chosen = [tuple(orders[k][i] for k in keys) for i in range(budget)]
    if len(set(chosen)) < budget:
        # Only past the longest key's length: a repeat is replaced by the next unused point of the
        # whole space in an order seeded by the keys (not the method), so two methods with the same
        # space still get the same settings, and a larger budget keeps a smaller one's settings.
        rng = np.random.default_rng(zlib.crc32("|".join(f"{k}:{len(space[k])}" for k in keys).encode()))
        points = list(itertools.product(*(range(len(space[k])) for k in keys)))
        spare = (points[i] for i in rng.permutation(len(points)))
        seen: set[tuple[int, ...]] = set()
        for i, point in enumerate(chosen):
            while point in seen:
                point = next(p for p in spare if p not in seen)
            seen.add(point)
            chosen[i] = point
    return [{k: space[k][index] for k, index in zip(keys, point, strict=True)} for point in chosen]


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
