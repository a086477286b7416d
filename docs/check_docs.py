"""Check the docs: every Python block compiles, every ``cb.Name`` it uses exists, every ``json``
block is JSON, every ``docs/protocols/<page>.md#section`` that the code cites is a heading of
that page, and every public name has a directive in docs/api.md. Given the built site's
``objects.inv`` (``--reference PATH``), also that the built API reference documents every
public name.

Run by ``nox -s docs``; exits non-zero with the page and line of each problem.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import sys
import zlib
from pathlib import Path

import trio_chatbridge

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.S | re.M)
PUBLIC_NAME = re.compile(r"\bcb\.([A-Za-z_]+)")
CITATION = re.compile(r"docs/protocols/(\w+\.md)#([\w-]+)")
HEADING = re.compile(r"^#+ (.+)$", re.M)


def anchor(heading: str) -> str:
    """A heading's anchor, as GitHub and myst-parser make it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def citation_problems() -> list[str]:
    """Citations of protocol-page sections, in code and docs, that point at no heading."""
    anchors = {
        page.name: {anchor(h) for h in HEADING.findall(page.read_text())}
        for page in (ROOT / "docs" / "protocols").glob("*.md")
    }
    problems = []
    for folder in ("trio_chatbridge", "tests", "benchmarks", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md"):
                continue
            text = path.read_text()
            for match in CITATION.finditer(text):
                if match.group(2) not in anchors.get(match.group(1), set()):
                    line = text.count("\n", 0, match.start()) + 1
                    where = path.relative_to(ROOT)
                    problems.append(f"{where}:{line}: {match.group(0)} is no section")
    return problems


def public_modules() -> list[str]:
    """``trio_chatbridge`` and every module under it with no private part in its name."""
    return ["trio_chatbridge"] + [
        info.name
        for info in pkgutil.walk_packages(trio_chatbridge.__path__, "trio_chatbridge.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]


DIRECTIVE = re.compile(r"^\.\. (currentmodule|automodule|auto\w+):: (\S+)", re.M)


def resolve(dotted: str) -> object:
    """The object a dotted public name stands for (None when there is none)."""
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


def undocumented(documented: set[int]) -> list[str]:
    """Every public name whose object is not among ``documented`` (by identity)."""
    problems = []
    for module in public_modules():
        for attr in getattr(importlib.import_module(module), "__all__", ()):
            if id(getattr(importlib.import_module(module), attr)) not in documented:
                problems.append(f"docs/api.md: {module}.{attr} is not in the API reference")
    return problems


def api_page_problems() -> list[str]:
    """Public names that no ``auto...`` directive of docs/api.md names."""
    documented: set[int] = set()
    current = "trio_chatbridge"
    for kind, name in DIRECTIVE.findall((ROOT / "docs" / "api.md").read_text()):
        if kind == "currentmodule":
            current = name
        elif kind == "automodule":
            module = importlib.import_module(name)
            documented |= {id(getattr(module, attr)) for attr in getattr(module, "__all__", ())}
        else:
            documented.add(id(resolve(name if "." in name else f"{current}.{name}")))
    return undocumented(documented)


def reference_problems(inventory: Path) -> list[str]:
    """Public names that the built API reference (its Sphinx inventory) does not document."""
    _, _, body = inventory.read_bytes().partition(b"zlib.\n")
    documented: set[int] = set()
    modules = public_modules()
    for line in zlib.decompress(body).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        parent, _, attr = name.rpartition(".")
        if role.startswith("py:") and parent in modules:
            documented.add(id(getattr(importlib.import_module(parent), attr, None)))
    return undocumented(documented)


def main(argv: list[str]) -> int:
    problems: list[str] = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            code = match.group(1)
            try:
                compile(code, f"{page.name}:{line}", "exec")
            except SyntaxError as exc:
                problems.append(f"{page.name}:{line}: {exc}")
            for name in PUBLIC_NAME.findall(code):
                if not hasattr(trio_chatbridge, name):
                    problems.append(f"{page.name}:{line}: cb.{name} is not a public name")
    for page in sorted((ROOT / "docs").rglob("*.md")):
        # Sphinx (-W) refuses a json block it cannot highlight: placeholders go in text blocks
        for match in JSON_BLOCK.finditer(page.read_text()):
            try:
                json.loads(match.group(1))
            except ValueError as exc:
                problems.append(f"{page.relative_to(ROOT)}: a json block is not JSON: {exc}")
    problems += citation_problems() + api_page_problems()
    if argv[:1] == ["--reference"]:
        problems += reference_problems(Path(argv[1]))
    for problem in problems:
        print(problem)
    print(f"checked {len(pages)} pages: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
