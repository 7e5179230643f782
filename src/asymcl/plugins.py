"""Loading user code that extends asymcl: ``--plugin MODULE_OR_FILE.py`` and the ``asymcl.plugins``
entry-point group.

A plugin is ordinary Python that calls :func:`asymcl.register_method`,
:func:`asymcl.register_dataset` or :func:`asymcl.register_backbone` when it is imported (see
docs/extending.md). This module only imports plugins; the registries live in the layers that own
them (methods: :mod:`asymcl.training.methods`, datasets: :mod:`asymcl.data.spec`, backbones:
:mod:`asymcl.models.backbones`), so it needs nothing but the standard library and is layer 0.

Each plugin is imported at most once per process (a file run twice would register its entries
twice, a clash with itself). :func:`loaded` lists the ``--plugin`` values in load order, so that a
process that starts others (sweep workers, ``experiments/parallel.py``) hands them the same
plugins; entry points need no handing over, every process loads them itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from types import ModuleType

from asymcl.errors import AsymclError, ConfigError

#: The entry-point group an installed package names its plugin in (``pyproject.toml``:
#: ``[project.entry-points."asymcl.plugins"] mine = "mypackage.asymcl_plugin"``).
ENTRY_POINT_GROUP = "asymcl.plugins"

_LOADED: dict[str, ModuleType] = {}  # --plugin value as given -> its module
_HANDOVER: dict[str, str] = {}  # --plugin value as given -> what a child process is given (files: absolute)
_ENTRY_POINTS_LOADED = False


def loaded() -> list[str]:
    """The ``--plugin`` values imported in this process, in order, files as absolute paths (what a
    child process is given: it may start in another folder)."""
    return list(_HANDOVER.values())


def _file_module_name(path: Path) -> str:
    """A module name for a plugin file, unique per resolved path (two ``plugin.py`` in different
    folders are different plugins) and stable across processes (pickled references resolve)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"asymcl_plugin_{stem}_{digest}"


def _import_file(path: Path) -> ModuleType:
    name = _file_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {path}: not a Python file asymcl can import; give a .py file or a module name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _failure(what: str, exc: BaseException) -> ConfigError:
    if isinstance(exc, AsymclError):  # the plugin's own registration error: already one clear line
        return ConfigError(f"plugin {what}: {exc}")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ConfigError(
        f"plugin {what} failed to import ({type(exc).__name__}: {first}); fix the plugin, "
        "or run with --debug for the traceback"
    )


def load_plugin(value: str, *, debug: bool = False) -> ModuleType:
    """Import one plugin: a path ending in ``.py`` (or naming an existing file), else a module name
    importable from ``sys.path``. Raises :class:`ConfigError` with one line when it cannot be
    found or fails to import (``debug=True``: the original exception, for its traceback)."""
    if value in _LOADED:
        return _LOADED[value]
    path = Path(value).expanduser()
    is_file = value.endswith(".py") or path.is_file()
    try:
        if is_file:
            if not path.is_file():
                raise ConfigError(f"plugin {value}: no such file; give the path of a .py file or a module name")
            module = _import_file(path.resolve())
        else:
            try:
                module = importlib.import_module(value)
            except ModuleNotFoundError as exc:
                if exc.name is None or not (value == exc.name or value.startswith(exc.name + ".")):
                    raise  # the plugin exists but imports something missing: a failed import
                raise ConfigError(
                    f"plugin {value}: no module named {value!r} on the Python path, and no file; "
                    "give a module name (pip install its package) or the path of a .py file"
                ) from None
    except ConfigError as exc:
        if debug or str(exc).startswith(f"plugin {value}"):
            raise
        raise _failure(value, exc) from exc
    except Exception as exc:
        if debug:
            raise
        raise _failure(value, exc) from exc
    _LOADED[value] = module
    _HANDOVER[value] = str(path.resolve()) if is_file else value
    return module


def load_entry_points(*, debug: bool = False) -> list[str]:
    """Load every installed ``asymcl.plugins`` entry point once per process; returns their names.

    An entry point naming a module imports it; one naming a callable (``pkg.mod:register``) also
    calls it with no arguments."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    names = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        what = f"{entry.name} (entry point {entry.value})"
        try:
            target = entry.load()
            if callable(target) and not isinstance(target, ModuleType):
                target()
        except Exception as exc:
            if debug:
                raise
            raise _failure(what, exc) from exc
        names.append(entry.name)
    return names


def load_plugins(values: Iterable[str] = (), *, entry_points: bool = True, debug: bool = False) -> None:
    """What every ``asymcl`` command does first: the installed entry points, then each ``--plugin``."""
    if entry_points:
        load_entry_points(debug=debug)
    for value in values:
        load_plugin(value, debug=debug)


def claim_name(kind: str, name: str, entry: object, registry: dict, builtin) -> bool:
    """The one rule of every registry's ``register_*``: a built-in's name is refused, the same
    object registered again is a no-op (returns False: nothing to add), another entry's name is
    refused. Returns True when ``entry`` is new and may be added under ``name``."""
    if name in builtin:
        raise ConfigError(f"{kind} name {name!r} clashes with asymcl's built-in {kind}; register it under another name")
    existing = registry.get(name)
    if existing is entry:
        return False
    if existing is not None:
        raise ConfigError(f"{kind} name {name!r} is already registered (by another plugin); choose another name")
    return True
