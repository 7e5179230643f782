"""The ``asymcl`` command: a thin shell over the library.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; the heavy imports happen inside ``func`` so that ``asymcl --help`` is fast.
User errors (:class:`asymcl.errors.AsymclError`) are printed as one line, exit status 2, no traceback.

Plugins (docs/extending.md) load before the parser is built, so that the choices it offers (datasets,
download names) include theirs: the installed ``asymcl.plugins`` entry points, then every
``--plugin MODULE_OR_FILE.py``, which every command accepts (repeatable).
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
    "asymcl.cli.studies",
    "asymcl.cli.export",
    "asymcl.cli.cache",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymcl",
        description="Asymmetric focal contrastive learning for class-imbalanced image data.",
    )
    parser.add_argument("--version", action="version", version=f"asymcl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback for user errors too")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    _add_plugin_option(subparsers)
    return parser


_PLUGIN_HELP = (
    "import user code that registers methods, datasets or backbones first: a module name or a "
    ".py file (repeatable; see docs/extending.md)"
)


def _add_plugin_option(subparsers: argparse._SubParsersAction) -> None:
    """``--plugin`` on every command and sub-command, declared once here (its value was read before
    the parser was built; here it is only documented and accepted)."""
    for command in set(subparsers.choices.values()):
        if "--plugin" not in command._option_string_actions:
            command.add_argument(
                "--plugin", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE.py", help=_PLUGIN_HELP
            )
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_plugin_option(action)


def _preload(argv: list[str]) -> argparse.Namespace:
    """``--plugin`` and ``--debug`` read ahead of the real parser (which depends on the plugins)."""
    early = argparse.ArgumentParser(prog="asymcl", add_help=False, allow_abbrev=False)
    early.add_argument("--plugin", dest="plugins", action="append", default=[])
    early.add_argument("--debug", action="store_true")
    return early.parse_known_args(argv)[0]


def _load_plugins(argv: list[str]) -> None:
    from asymcl.plugins import load_plugins

    early = _preload(argv)
    load_plugins(early.plugins, debug=early.debug)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _load_plugins(argv)
    except AsymclError as exc:
        if "--debug" in argv:
            raise
        print(f"asymcl: error: {user_message(exc)}", file=sys.stderr)
        return 2
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
