"""Benchmarks: ``python -m benchmarks [name ...]`` (or ``nox -s bench``).

Each benchmark measures a baseline in the same run (a raw trio channel, a bare executemany,
a raw client) and reports its own figure as a ratio against it, plus memory.
"""
