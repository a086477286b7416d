"""What ``import trio_chatbridge`` loads: heavy dependencies only some users need are imported
where they are used, so a bridge that never touches Redis (or metrics, or a platform) and every
CLI start do not pay for them."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Final

import pytest

import trio_chatbridge as cb
from trio_chatbridge.stores import RedisStore

ROOT: Final = Path(__file__).resolve().parent.parent
ENV: Final = {**os.environ, "PYTHONPATH": str(ROOT)}
# Generous for a loaded machine: the import itself takes about 0.3 s of CPU.
LIMIT: Final = 60.0  # seconds of real time per subprocess
# Loaded only by what needs them: RedisStore.from_url, the metrics and health endpoints, the
# WeCom webhook's server, the Lark connector's frames, the WeChat and WeCom ciphers.
LAZY: Final = ("coredis", "prometheus_client", "hypercorn", "google.protobuf", "cryptography")


def loaded_after(code: str) -> set[str]:
    """The names in ``LAZY`` that a fresh interpreter has in ``sys.modules`` after ``code``."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps([name for name in {LAZY!r} if name in sys.modules]))
        """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=LIMIT,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.timeout(LIMIT * 2)
def test_import_leaves_optional_dependencies_unloaded() -> None:
    """The package, its stores and its command line's entry load none of them."""
    assert loaded_after("import trio_chatbridge, trio_chatbridge.stores") == set()
    assert loaded_after("import trio_chatbridge.__main__") == set()


@pytest.mark.timeout(LIMIT)
def test_redis_store_from_url_loads_coredis() -> None:
    """Building a RedisStore is what imports coredis (it connects only when opened)."""
    code = """
        import trio_chatbridge as cb
        cb.RedisStore.from_url("redis://127.0.0.1:6379/0")
        """
    assert loaded_after(code) == {"coredis"}


def test_redis_store_is_a_real_class() -> None:
    """The public name is the class itself, not a lazy proxy."""
    assert cb.RedisStore is RedisStore
    assert inspect.isclass(RedisStore)
    assert issubclass(RedisStore, cb.Store)
    assert RedisStore.__module__ == "trio_chatbridge.stores._redis"


def test_redis_store_without_coredis_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the 'redis' extra the package still imports, and from_url says what to do."""
    monkeypatch.setitem(sys.modules, "coredis", None)  # what `import coredis` then raises
    with pytest.raises(cb.ConfigurationError, match=r"pip install 'trio_chatbridge\[redis\]'"):
        RedisStore.from_url("redis://127.0.0.1:6379/0")
