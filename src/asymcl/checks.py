"""The value checks that field declarations share: ``check(value) -> normalised value``.

A check raises ValueError saying what is allowed ("must be >= 0"); whoever declared the field adds
the key, the value given and the help text, in its own error class (the run config a
:class:`~asymcl.errors.ConfigError`, :class:`~asymcl.data.DataSpec` a
:class:`~asymcl.errors.DataError`). Layer 0, standard library only, so that the data layer's
declarations (:mod:`asymcl.data.spec`) and the run config's (:mod:`asymcl.training.config`) use
the same rules without the data layer importing the training layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def choice(*allowed: str | None) -> Callable[[Any], Any]:
    """One of ``allowed`` (``None`` may be one of them)."""

    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return check


def integer(minimum: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
    """An int >= ``minimum`` (a float with an integral value is taken: YAML's ``2.0``); with
    ``optional`` also None. A bool is not an integer here."""

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError("must be an integer" + (" or null" if optional else ""))
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return check


def number(
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
    optional: bool = False,
) -> Callable[[Any], Any]:
    """A finite float >= ``minimum`` (> with ``exclusive``) and < ``maximum``; ints are taken."""

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number" + (" or null" if optional else ""))
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("must be finite")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise ValueError(f"must be {'>' if exclusive else '>='} {minimum}")
        if maximum is not None and value >= maximum:
            raise ValueError(f"must be < {maximum}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def optional_str(value: Any) -> str | None:
    """Null, or a string (a path is taken and written as its string)."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise ValueError("must be a string (a path) or null")
    return str(value)
