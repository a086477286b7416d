"""A SQLiteStore named by a ``file:`` URI: created readable by its owner only, as one named by
a path (it holds tokens); the URI read as a URI whatever SQLite's build."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import quote

import pytest
import trio

import trio_chatbridge as cb


async def test_a_store_named_by_a_file_uri_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The store holds WeChat tokens: a plain path is created 0600, a file: URI was not."""
    path = tmp_path / "j.db"
    previous = os.umask(0o022)  # a common umask: what SQLite creates is 0644
    try:
        async with cb.SQLiteStore(f"file:{quote(str(path))}?mode=rwc") as store:
            await store.set("weixin", "bot", "token", "secret")
    finally:
        os.umask(previous)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_read_only_uri_creates_nothing_and_an_in_memory_one_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cb.StoreError):
        async with cb.SQLiteStore(f"file:{quote(str(tmp_path / 'none.db'))}?mode=ro"):
            pass
    assert not (tmp_path / "none.db").exists()
    async with cb.SQLiteStore("file:scratch?mode=memory&cache=shared") as store:
        await store.set("p", "a", "k", "v")
        assert await store.get("p", "a", "k") == "v"
    assert list(await trio.Path(tmp_path).iterdir()) == []  # no "file:..." file left
