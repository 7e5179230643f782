"""Issue 24 part 2: a method is named in the registry and in the presets (the tables that list
methods by design), nowhere else: help texts, error messages and tunable keys ask the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import asymcl
from asymcl.training.methods import BUILTIN

SRC = Path(asymcl.__file__).resolve().parent
#: Where naming methods is the point: the registry, and the tables that list methods on purpose
#: (the benchmark presets, compare's profiles, the claim's comparisons and grid, the demo's table).
ALLOWED = {
    "training/methods.py",
    "experiments/reproduce.py",
    "experiments/compare.py",
    "experiments/claims.py",
    "experiments/claim_grid.py",
    "experiments/claim_presets.py",
    "training/demo.py",
}
#: A string that is a method's name by coincidence says so on its line.
MARKER = "# not a method name"
_LISTED = re.compile(r"\b(supcon|fcl|acl|afcl)\b")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_method_name_literal_outside_the_registry_and_the_presets():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative in ALLOWED:
            continue
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
                continue
            if MARKER in lines[node.lineno - 1]:
                continue
            if node.value in BUILTIN or _LISTED.search(node.value):
                found.append(f"{relative}:{node.lineno}: {node.value[:70]!r}")
    assert not found, "method names outside the registry and the presets:\n" + "\n".join(found)
