"""The ``asymcl`` command: a thin shell over the library.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; the heavy imports happen inside ``func`` so that ``asymcl --help`` is fast.
User errors (:class:`asymcl.errors.AsymclError`) are printed as one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from asymcl import __version__
from asymcl.errors import AsymclError, user_message

# Modules that each register one or more sub-commands; a module that is missing is skipped so that
# the layers can be developed (and installed) independently.
_COMMAND_MODULES = (
    "asymcl.cli.data",
    "asymcl.cli.train",
    "asymcl.cli.experiments",
    "asymcl.cli.export",
    "asymcl.cli.cache",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymcl",
        description="Asymmetric focal contrastive learning for class-imbalanced image data.",
    )
    parser.add_argument("--version", action="version", version=f"asymcl {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback for user errors too"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except AsymclError as exc:
        if args.debug:
            raise
        print(f"asymcl: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left; not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("asymcl: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
