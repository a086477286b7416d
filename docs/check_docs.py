"""Check the docs: every Python block compiles, and every ``cb.Name`` it uses exists.

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
    for problem in problems:
        print(problem)
    print(f"checked {len(pages)} pages: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
