"""What the experiment commands (:mod:`asymcl.cli.experiments`, :mod:`asymcl.cli.studies`) parse and
print alike: the repeat command line, ``--workers``, and comma-separated lists."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import TypeVar

from asymcl.errors import ConfigError

WORKERS_HELP = (
    "run N worker processes on this machine, each with cores/N torch threads, after building "
    "the feature caches with every core (default 1; on a 2-core CPU, 2 finishes small runs "
    "about 1.7x sooner)"
)

T = TypeVar("T")


def command_line(*parts: object, **options: object) -> str:
    """The canonical command line of this invocation (what the report prints to repeat it)."""
    words = ["asymcl", *map(str, parts)]
    for name, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + name.replace("_", "-"))
        if value is not True:
            words.append(str(value))
    return shlex.join(words)


def workers_option(args: argparse.Namespace) -> int | None:
    """--workers as the repeat command line spells it: left out at the default of 1."""
    return args.workers if args.workers != 1 else None


def name_list(text: str | None) -> list[str] | None:
    """``a,b`` -> ``["a", "b"]``; None when the option was not given."""
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def value_list(text: str | None, option: str, parse: Callable[[str], T], example: str) -> list[T] | None:
    """``1,100`` -> each item through ``parse``; a clear error naming ``option`` for anything else."""
    if text is None:
        return None
    try:
        values = [parse(item) for item in name_list(text) or []]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"{option} {text!r}: expected values such as {example}")
    return values


def seed_list(text: str | None) -> list[int] | None:
    """``0,1`` or ``0-3`` (both ends included) -> the seeds; a clear error for anything else."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, _, high = part.partition("-")
            seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise ConfigError(f"--only-seeds {text!r}: expected seeds such as 0,1 or 0-3") from None
    return seeds
