from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import hypothesis
import pytest
import trio
from leaks import PUBLIC_CLASSES, SecretWatch, kept_logger_levels

if TYPE_CHECKING:
    from trio_chatbridge.testing import RedisServer

# CI tests the same examples on every run (derandomize), so a red run always means a change;
# HYPOTHESIS_PROFILE=deep explores ten times more, from a fresh random seed each time.
hypothesis.settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
hypothesis.settings.register_profile("deep", deadline=None, max_examples=1000)
# nox -s fuzz: the parsers' properties, 5,000 random examples each (docs/reliability.md).
hypothesis.settings.register_profile("fuzz", deadline=None, max_examples=5_000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Every test is bounded in real time, so a deadlock fails instead of hanging the run. The limit
# is pytest-timeout's (``timeout`` in pyproject.toml, ``@pytest.mark.timeout(N)`` per test;
# ``slow`` tests get SLOW_LIMIT). A Trio test is cancelled from inside its run a little before
# the limit, so it fails alone with a clear message and the run goes on; pytest-timeout's own
# thread, at the limit itself, is the backstop for what cancellation cannot reach (a blocking
# call, a shielded wait): it prints every thread's stack and ends the run.
SLOW_LIMIT: Final = 300.0  # seconds of real time for a test marked ``slow``
CANCEL_MARGIN: Final = 0.9  # a Trio test is cancelled at this fraction of its limit


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_LIMIT))


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        return float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0))
    return float(item.config.getini("timeout") or 0)


def _bounded(test: Callable[..., Awaitable[None]], limit: float) -> Callable[..., Awaitable[None]]:
    """``test``, cancelled after ``limit`` seconds of real time (not the test's clock)."""

    @functools.wraps(test)
    async def bounded(**kwargs: Any) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:

            def expire() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

            timer = threading.Timer(limit, expire)
            timer.daemon = True
            timer.start()
            try:
                await test(**kwargs)
            finally:
                timer.cancel()
        if scope.cancelled_caught:
            pytest.fail(f"cancelled after {limit:.0f} s of real time: a deadlock, or a slow test")

    return bounded


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # Runs before pytest-trio wraps the test in trio.run, so the bound is inside the run.
    limit = _limit(item) * CANCEL_MARGIN
    if limit > 0 and item.get_closest_marker("trio") and isinstance(item, pytest.Function):
        inner = getattr(item.obj, "hypothesis", None)
        if inner is not None:
            inner.inner_test = _bounded(inner.inner_test, limit)
        else:
            item.obj = _bounded(item.obj, limit)
    yield


@pytest.fixture
def real_deadline(request: pytest.FixtureRequest) -> float:
    """When this test's time is up, on ``time.monotonic()``: the fraction of its limit a Trio
    test is cancelled at (inf: no limit). A test that waits on a child process bounds its
    waits by it, so it fails alone before pytest-timeout's backstop ends the run."""
    limit = _limit(request.node)
    return time.monotonic() + limit * CANCEL_MARGIN if limit > 0 else math.inf


@pytest.fixture(autouse=True)
def no_secret_in_logs_or_reprs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs with every logger at DEBUG; it fails if a log record, or the repr of
    one of our public objects it made, shows a secret it configured (a constructor argument
    named like a token, secret or key) or a URL with a credential in its query."""
    watch = SecretWatch()
    for cls in PUBLIC_CLASSES:
        monkeypatch.setattr(cls, "__init__", watch.watching(cls))
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        with kept_logger_levels():
            yield
    finally:
        root.removeHandler(watch)
        root.setLevel(level)
    for obj in watch.made():
        watch.check_repr(obj)
    if watch.leaks:
        pytest.fail("a secret was shown:\n" + "\n".join(watch.leaks[:5]), pytrace=False)


@pytest.fixture(scope="session")
def redis_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis node for the whole session (tests keep apart by key prefix)."""
    from redis_servers import require_redis  # here: a conftest copied alone still imports

    from trio_chatbridge.testing import redis_server

    require_redis()
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """A three-node Redis Cluster for the whole session."""
    from redis_servers import require_redis

    from trio_chatbridge.testing import redis_cluster

    require_redis()
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as nodes:
        yield nodes
