"""A griffe extension (mkdocs.yml) for the docstrings' reST habits, which Markdown does not know.

asymcl's docstrings are prose in Markdown with two reST habits: Sphinx roles (:class:`Name`,
:func:`~asymcl.x.f`) and a paragraph ending in ``::`` before an indented example. Rewriting the
docstrings of the whole package for the site would touch every file; this reads them as they are.
A role becomes a code span that links to the object when the site documents it (an *optional*
autorefs link, so a role naming an undocumented or private object stays plain text and does not
fail ``mkdocs build --strict``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The role's target as a full dotted path: as written, or resolved in the object's scope."""
    if target.startswith("asymcl."):
        return target
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)  # this object's members, its module's names, its parents'
    except griffe.NameResolutionError:
        return target
    return f"{resolved}.{rest}" if rest else resolved


def _rewrite(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match) -> str:
        target = match["target"].lstrip("!")
        short = target.startswith("~")
        target = target.lstrip("~")
        shown = target.rsplit(".", 1)[-1] if short else target
        identifier = _identifier(obj, target)
        return (f'<autoref optional identifier="{html.escape(identifier)}">'
                f"<code>{html.escape(shown)}</code></autoref>")

    text = ROLE.sub(link, text)
    # "Example::" then an indented block: in Markdown the block is already code; drop one colon.
    return re.sub(r"(\S)::\n\n", r"\1:\n\n", text)


class ReSTRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
