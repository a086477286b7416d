"""Check the docs: every Python block compiles, every ``cb.Name`` it uses exists, and every
``docs/protocols/<page>.md#section`` that the code cites is a heading of that page.

Run by ``nox -s docs``; exits non-zero with the page and line of each problem.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio_chatbridge

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
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


def main() -> int:
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
    problems += citation_problems()
    for problem in problems:
        print(problem)
    print(f"checked {len(pages)} pages: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
