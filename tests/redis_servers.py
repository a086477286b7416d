"""The Redis tests' rule: without ``redis-server`` they are skipped, except in CI (``CI=true``),
where a missing server fails the run."""

from __future__ import annotations

import os

import pytest

from trio_chatbridge.testing import have_redis


def require_redis() -> None:
    """Skip the calling test without redis-server (fail in CI)."""
    if have_redis():
        return
    message = "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
