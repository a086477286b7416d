"""Run benchmarks, each in a fresh process so that memory figures are its own."""

from __future__ import annotations

import subprocess
import sys

from .bot import BENCHMARKS as BOT
from .core import BENCHMARKS as CORE
from .embed import BENCHMARKS as EMBED
from .lark import BENCHMARKS as LARK
from .migration import BENCHMARKS as MIGRATION
from .model import BENCHMARKS as MODEL
from .redis import BENCHMARKS as REDIS
from .replay import BENCHMARKS as REPLAY
from .sqlite import BENCHMARKS as SQLITE
from .wecom import BENCHMARKS as WECOM
from .weixin import BENCHMARKS as WEIXIN

ALL = {**CORE, **WEIXIN, **WECOM, **LARK}
ALL.update(EMBED)
ALL.update(BOT)
ALL.update(MODEL)
ALL.update(REDIS)
ALL.update(SQLITE)
ALL.update(MIGRATION)
ALL.update(REPLAY)


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(ALL)}", file=sys.stderr)
        return 2
    if len(names) == 1:
        ALL[names[0]]()
        return 0
    for name in names or list(ALL):
        code = subprocess.call([sys.executable, "-m", "benchmarks", name])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
