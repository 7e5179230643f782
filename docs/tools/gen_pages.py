"""The site's generated pages (mkdocs-gen-files runs this at every build; see mkdocs.yml).

- ``index.md``: README.md, with its links to ``docs/...`` made relative to the site;
- ``benchmarks.md``: benchmarks/README.md;
- ``reference/api.md``: every name the package root exports (``asymcl._EXPORTS``, whatever layer
  defines it: the run API, the extension API), documented where it is defined, then the other
  result types of :mod:`asymcl.api`. Generated because the root's ``__all__`` is built from that
  table at run time, which griffe (reading the source) cannot evaluate; importing ``asymcl`` and
  ``asymcl.api`` is cheap (no torch);
- ``reference/cli.md``: the ``--help`` of ``asymcl`` and of every sub-command, from the parsers
  themselves (argparse has no mkdocs plugin we trust: mkdocs-click is for Click), so a new
  option or command is in the reference without anyone writing it down.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # document this checkout, whichever asymcl is installed

# Where each repository file that the README links to lives on the site.
SITE_PATHS = {"benchmarks/README.md": "benchmarks.md"}
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def site_link(target: str) -> str:
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return target  # a web address or an anchor on the page
    path, _, anchor = target.partition("#")
    if path in SITE_PATHS:
        path = SITE_PATHS[path]
    elif path.startswith("docs/") and (ROOT / path).exists():
        path = path[len("docs/"):]
    else:
        raise SystemExit(f"README.md links to {target!r}, which the docs site does not hold: link a page "
                         "under docs/, or give the file a place on the site in docs/tools/gen_pages.py (SITE_PATHS)")
    return path + (f"#{anchor}" if anchor else "")


def copy_page(source: str, page: str, rewrite_links: bool) -> None:
    text = (ROOT / source).read_text()
    if rewrite_links:
        text = LINK.sub(lambda match: f"]({site_link(match['target'])})", text)
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(text)
    mkdocs_gen_files.set_edit_path(page, Path("..") / source)


def _commands(parser: argparse.ArgumentParser, words: list[str]):
    yield " ".join(words), parser
    for action in parser._actions:  # argparse keeps sub-commands here; it has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, [*words, name])


def cli_page() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix the width for the page
    from asymcl.cli import build_parser

    lines = ["# Command line", "",
             "Every command and option of `asymcl`, as `--help` prints them. A user error (a bad key, a "
             "missing file) is printed as one line starting `asymcl: error:` and exits with status 2; "
             "`--debug` shows the traceback.", ""]
    for command, parser in _commands(build_parser(), ["asymcl"]):
        lines += [f"## `{command}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def api_page() -> str:
    import asymcl
    import asymcl.api

    exported = [name for name in asymcl.__all__ if name in asymcl._EXPORTS]
    # A name whose module a layer's page documents is linked there: an object documented twice has
    # two anchors, which autorefs refuses.
    layer_pages = "\n".join(page.read_text() for page in (ROOT / "docs" / "reference").glob("*.md"))
    elsewhere = set(re.findall(r"^::: (\S+)", layer_pages, flags=re.M))
    lines = ["# Python API and extension API", "",
             "What `import asymcl` offers at the top level, including the whole-run functions "
             "`asymcl.train`, `asymcl.sweep` and `asymcl.report` and their results. Importing `asymcl` "
             "is cheap (no torch): these names are imported on first use. The guide with examples is "
             "[Python API](../python-api.md).", "",
             "::: asymcl", "    options:", "      show_root_heading: false", "      members: false", ""]
    linked = [name for name in exported if asymcl._EXPORTS[name] in elsewhere]
    if linked:
        lines += ["Also exported here, documented with their layer:", ""]
        lines += [f"- [`asymcl.{name}`][{asymcl._EXPORTS[name]}.{name}] (`{asymcl._EXPORTS[name]}`)"
                  for name in linked]
        lines.append("")
    for name in exported:
        if name not in linked:
            lines += [f"::: {asymcl._EXPORTS[name]}.{name}", "    options:", "      show_root_full_path: false", ""]
    others = [name for name in asymcl.api.__all__ if name not in exported]
    if others:
        lines += ["## Result types", "", "The parts of the results above, from `asymcl.api`.", ""]
        for name in others:
            lines += [f"::: asymcl.api.{name}", "    options:", "      heading_level: 3",
                      "      show_root_full_path: false", ""]
    return "\n".join(lines)


copy_page("README.md", "index.md", rewrite_links=True)
with mkdocs_gen_files.open("reference/api.md", "w") as out:
    out.write(api_page())
copy_page("benchmarks/README.md", "benchmarks.md", rewrite_links=False)
with mkdocs_gen_files.open("reference/cli.md", "w") as out:
    out.write(cli_page())
