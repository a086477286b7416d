"""Small helpers shared by the benchmarks: timing and memory figures."""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took (best of one run: each benchmark runs in its own process)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_trio(fn: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``trio.run(fn)`` took, run start-up included (it is the same for both sides)."""
    return timed(lambda: trio.run(fn))


def report(name: str, rows: list[tuple[str, str]]) -> None:
    """Print one benchmark's figures as an aligned block."""
    print(f"## {name}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
