"""Sphinx configuration: the Markdown pages in docs/ (through MyST) plus an API reference
generated from the docstrings. Build with ``nox -s docs`` (warnings are errors)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from pathlib import Path
from typing import Any

from sphinx.pycode import ModuleAnalyzer

import trio_chatbridge

DOCS = Path(__file__).resolve().parent
LINK = re.compile(r"\[([^\]]+)\]\(((?:\.\./)+[^)#\s]+)(?:#[^)\s]*)?\)")

project = "trio_chatbridge"
author = "the trio_chatbridge authors"
copyright = "the trio_chatbridge authors"
version = release = trio_chatbridge.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib_trio",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "check_docs.py"]

# Pages link each other's sections as ``page.md#heading``; code comments cite
# ``docs/protocols/<platform>.md#heading`` the same way.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}


def _outside_links(app: object, docname: str, source: list[str]) -> None:
    """Links from a page to a file outside docs/ (``../examples/README.md``) work on GitHub
    but name no page of the site: there they become the file's path, in code."""
    here = (DOCS / docname).parent

    def replace(match: re.Match[str]) -> str:
        target = (here / match.group(2)).resolve()
        if target.is_relative_to(DOCS):
            return match.group(0)
        return f"{match.group(1)} (`{target.relative_to(DOCS.parent)}`)"

    source[0] = LINK.sub(replace, source[0])


@cache
def _alias_docs() -> dict[tuple[int, str], list[str]]:
    """The docstrings written under the type aliases in the package's modules (a string after
    ``Name: TypeAlias = ...``), by (id of the alias, name)."""
    found: dict[tuple[int, str], list[str]] = {}
    for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for (scope, name), lines in ModuleAnalyzer.for_module(info.name).find_attr_docs().items():
            if not scope and hasattr(module, name):
                found.setdefault((id(getattr(module, name)), name), list(lines))
    return found


def _alias_doc(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """A type alias re-exported by a public module is documented where it is defined, in a
    private module, and the API reference would show no text for it (or the docstring of
    ``types.UnionType``): there it gets the text written under its definition."""
    if what != "data":
        return
    doc = _alias_docs().get((id(obj), name.rsplit(".", 1)[-1]))
    if doc:
        lines[:] = doc


def setup(app: Any) -> None:
    app.connect("source-read", _outside_links)
    app.connect("autodoc-process-docstring", _alias_doc)


html_theme = "sphinx_rtd_theme"
html_title = "trio_chatbridge"
