"""The layering of docs/architecture.md, checked on the source: import direction, no cycles, file size."""

from __future__ import annotations

import ast
from pathlib import Path

import asymcl

SRC = Path(asymcl.__file__).resolve().parent
# Layer of each package; modules directly under asymcl/ (errors, atomic, ...) are layer 0, except
# asymcl.api (whole runs from Python), which wraps the training and experiment layers.
LAYERS = {"losses": 1, "data": 2, "models": 2, "training": 3, "experiments": 4, "cli": 5, "api": 5}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    if module == "asymcl.__main__":  # `python -m asymcl`: the CLI's entry point
        return LAYERS["cli"]
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(path: Path, module: str) -> list[tuple[str, bool, bool]]:
    """(imported asymcl module, at module level?, only under ``if TYPE_CHECKING:``?) for every
    import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from asymcl.training import methods` imports the sub-module asymcl.training.methods
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("asymcl"):
                found.append((name, id(node) in top_level, id(node) in typing_only))
    return found


def _graph(*, typing_only: bool = False) -> dict[str, list[tuple[str, bool]]]:
    """module -> (imported module, at module level?); ``typing_only``: ``if TYPE_CHECKING:``
    imports included (they never run, so they are no dependency, but a cycle through one is still
    two modules that cannot be understood apart)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        module: [
            (name, top) for name, top, typed in _imports(path, module) if name in files and (typing_only or not typed)
        ]
        for module, path in files.items()
    }


def test_no_layer_imports_a_higher_one():
    wrong = [
        f"{module} -> {name}"
        for module, names in _graph().items()
        for name, _ in names
        if _layer(name) > _layer(module)
    ]
    assert not wrong, wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # A package's __init__ is imported with any of its modules; a cycle through it is still a cycle.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # asymcl/__init__ and a package __init__ importing their own sub-modules are not cycles.
    return [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c[1:])]


def test_no_import_cycles():
    """Lazy imports inside functions count too: a cycle hidden in a function is still a cycle. So
    do ``if TYPE_CHECKING:`` imports (sweep.py <-> workers.py was one: the types now have their own
    module)."""
    graph = {
        module: {name for name, _ in names if name != module} for module, names in _graph(typing_only=True).items()
    }
    cycles = _cycles(graph)
    assert not cycles, cycles


def test_the_cycle_check_sees_a_type_only_cycle(tmp_path):
    (tmp_path / "a.py").write_text("from asymcl.b import run\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from asymcl.a import Spec\n"
    )

    def graph(typing_only: bool) -> dict[str, set[str]]:
        return {
            f"asymcl.{m}": {
                name for name, _, typed in _imports(tmp_path / f"{m}.py", f"asymcl.{m}") if typing_only or not typed
            }
            for m in "ab"
        }

    assert _cycles(graph(typing_only=False)) == []
    assert _cycles(graph(typing_only=True)) == [["asymcl.a", "asymcl.b", "asymcl.a"]]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: Path, module: str, files: set[str]) -> list[str]:
    """Private names (``_x``) ``module`` takes from another asymcl module: ``from M import _x`` or
    ``M._x`` on an imported module. A private *module* (``asymcl.losses._blockwise``) is private to
    its package: its own package's modules may import it, no other."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}  # local name -> asymcl module it is bound to
    found = []

    def outside(owner: str) -> bool:
        return not (module == owner or module.startswith(owner + "."))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asymcl"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in files:
                    aliases[alias.asname or alias.name] = full
                    if _private(alias.name) and outside(node.module):
                        found.append(f"{module}: from {node.module} import {alias.name}")
                elif _private(alias.name):
                    found.append(f"{module}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for i, part in enumerate(parts):
                    if _private(part) and outside(".".join(parts[:i])):
                        found.append(f"{module}: import {alias.name}")
                if alias.asname and alias.name.startswith("asymcl"):
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
        ):
            owner = aliases[node.value.id]
            if f"{owner}.{node.attr}" not in files or outside(owner):
                found.append(f"{module}: {owner}.{node.attr}")
    return found


def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore is its module's own: another module that needs it gets a
    public name (or the code moves). Private modules (``losses/_blockwise.py``) are their package's."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    used = [use for module, path in sorted(files.items()) for use in _private_uses(path, module, set(files))]
    assert not used, used


def test_the_private_name_check_sees_each_form(tmp_path):
    files = {"asymcl.pkg.a", "asymcl.pkg._inner", "asymcl.other"}
    (tmp_path / "b.py").write_text(
        "from asymcl.pkg.a import _helper, public\nfrom asymcl.pkg import a, _inner\n"
        "import asymcl.pkg._inner\nx = a._cache\n"
    )
    (tmp_path / "c.py").write_text("from asymcl.pkg import _inner\nfrom asymcl.pkg import a as _a\ny = _a.public\n")
    assert _private_uses(tmp_path / "b.py", "asymcl.other", files) == [
        "asymcl.other: from asymcl.pkg.a import _helper",
        "asymcl.other: from asymcl.pkg import _inner",
        "asymcl.other: import asymcl.pkg._inner",
        "asymcl.other: asymcl.pkg.a._cache",
    ]
    assert _private_uses(tmp_path / "c.py", "asymcl.pkg.c", files) == []  # its own package's private module


def test_every_source_file_is_under_500_lines():
    long = {
        name: n
        for p in SRC.rglob("*.py")
        if (name := str(p.relative_to(SRC))) and (n := len(p.read_text().splitlines())) >= 500
    }
    assert not long, long


def test_the_extension_api_is_defined_in_the_layer_that_owns_each_registry():
    """``asymcl.register_*`` are lazy re-exports (``import asymcl`` stays torch-free): each name is
    defined in the module the table names, never a copy."""
    import importlib

    for name, module in asymcl._EXPORTS.items():
        assert getattr(asymcl, name).__module__ == module, name
        assert getattr(importlib.import_module(module), name) is getattr(asymcl, name)
    assert asymcl._EXPORTS["register_method"] == "asymcl.training.methods"
    assert asymcl._EXPORTS["register_dataset"] == "asymcl.data.spec"
    assert asymcl._EXPORTS["register_backbone"] == "asymcl.models.backbones"
