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


REPEAT = 3  # best of three: the machine is shared, and the best run is the least disturbed


def timed(fn: Callable[[], Any], repeat: int = REPEAT) -> float:
    """The shortest of ``repeat`` runs of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed_trio(fn: Callable[[], Awaitable[Any]], repeat: int = REPEAT) -> float:
    """The shortest of ``repeat`` runs of ``trio.run(fn)`` (start-up included on both sides)."""
    return timed(lambda: trio.run(fn), repeat)


def report(name: str, rows: list[tuple[str, str]]) -> None:
    """Print one benchmark's figures as an aligned block."""
    print(f"## {name}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
