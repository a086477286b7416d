"""Public docstrings state private constants' values as plain numbers (a reader cannot look the
constant up): each such number is rendered here from its constant, so a change to one without
the other fails."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from trio_chatbridge import Debouncer, RedisStore, SQLiteStore
from trio_chatbridge._debounce import PARKED_SHARE
from trio_chatbridge._receive import BURST_LINGER, MAX_HANDLERS
from trio_chatbridge._websocket import (
    ANSWER_WITHIN,
    BACKLOG,
    PUT_BATCH,
    PUT_GRACE,
    RECONNECT_WAIT,
    WebSocketDriver,
)
from trio_chatbridge.platforms import wecom, weixin
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol
from trio_chatbridge.stores._redis import ANSWER_KEPT, BATCH
from trio_chatbridge.stores._sqlite import BUSY_TIMEOUT_MS, CHECKPOINT_AFTER, INLINE_ROWS

STATED: list[tuple[Callable[..., Any] | type, str]] = [
    (Debouncer, f"``max_pending // {PARKED_SHARE}``"),
    (WebSocketDriver, f"at most {MAX_HANDLERS} at once"),
    (WebSocketDriver, f"unless it says otherwise ({ANSWER_WITHIN:g})"),
    (WebSocketDriver, f"the connection to come back ({RECONNECT_WAIT:g})"),
    (WebSocketDriver, f"in one put at most ({PUT_BATCH})"),
    (WebSocketDriver, f"stops reading ({BACKLOG:,};"),
    (WebSocketDriver, f"after its first message ({BURST_LINGER:g})"),
    (WebSocketDriver.run, f"for at most {PUT_GRACE:g} s more"),
    (wecom.LongConnection.run, f"for at most {PUT_GRACE:g} s"),
    (weixin.LongPoll.run, f"for at most {weixin_protocol.CONFIG_TIMEOUT:g} s"),
    (weixin.LongPoll.running, f"for at most {weixin_protocol.CONFIG_TIMEOUT:g} s"),
    (RedisStore.journal_pending, f"{BATCH} accounts to a pipeline"),
    (RedisStore.acquire_leases, f"{BATCH} to a pipeline"),
    (RedisStore.renew_leases, f"{BATCH} to a pipeline"),
    (RedisStore.journal_add, f"(kept {ANSWER_KEPT} s under"),
    (SQLiteStore, f"of at most {INLINE_ROWS} rows"),
    (SQLiteStore, f"about {CHECKPOINT_AFTER:,} rows"),
    (SQLiteStore, f"waits up to {BUSY_TIMEOUT_MS / 1000:g} s"),
]


@pytest.mark.parametrize(("where", "text"), STATED, ids=lambda x: getattr(x, "__qualname__", x))
def test_a_docstring_states_its_constants_value(
    where: Callable[..., Any] | type, text: str
) -> None:
    assert text in " ".join((inspect.getdoc(where) or "").split())


def test_the_drivers_defaults_are_the_constants_its_docstring_states() -> None:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(WebSocketDriver).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert {
        k: defaults[k]
        for k in ("answer_within", "reconnect_wait", "put_batch", "backlog", "linger")
    } == {
        "answer_within": ANSWER_WITHIN,
        "reconnect_wait": RECONNECT_WAIT,
        "put_batch": PUT_BATCH,
        "backlog": BACKLOG,
        "linger": BURST_LINGER,
    }
