"""The service under a hostile operator and hostile HTTP clients: what it shows, how it fails
at start, and what its endpoint answers."""

from __future__ import annotations

import logging
import string

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_chatbridge as cb
from trio_chatbridge._config import HttpConfig
from trio_chatbridge._redact import redact
from trio_chatbridge._service import run_service
from trio_chatbridge.platforms import wecom

URL_PASSWORD = "pw-in-the-url-7Qx"


async def _echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


async def test_a_password_in_a_connector_url_shows_neither_in_the_log_nor_in_readyz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WebSocket URL with a user part (``wss://user:password@host/``) failing to connect:
    its password reached the WARNING line and /readyz's ``last_error`` before."""
    caplog.set_level(logging.INFO)
    connector = wecom.LongConnection(
        bot_id="bot-1", secret="wecom-secret", url=f"ws://proxy:{URL_PASSWORD}@127.0.0.1:1/"
    )
    bridge = cb.Bridge([connector], _echo, store=cb.MemoryStore())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            service = await nursery.start(
                lambda task_status: run_service(
                    bridge, http=HttpConfig(listen="127.0.0.1:0"), task_status=task_status
                )
            )
            await bridge.wait_status(lambda s: s[connector.name].last_error is not None)
            ready = await client.get(service[0] + "/readyz")
            nursery.cancel_scope.cancel()
    error = ready.json()["connectors"][connector.name]["last_error"]
    assert "ws://proxy:***@127.0.0.1:1/" in error
    assert URL_PASSWORD not in ready.text
    assert "ws://proxy:***@127.0.0.1:1/" in caplog.text
    assert URL_PASSWORD not in caplog.text


_URL_CHARS = string.ascii_letters + string.digits + "-._~%!$&'()*+,;="


@given(
    scheme=st.sampled_from(["http", "https", "ws", "wss", "redis", "rediss", "WSS"]),
    user=st.text(_URL_CHARS.replace("&", ""), max_size=8),
    password=st.text(_URL_CHARS, min_size=1, max_size=20),
    rest=st.sampled_from(["", "/", "/path", ":6379/0", "?prefix=a", "/x?y=1#f"]),
)
def test_no_url_password_survives_redaction(
    scheme: str, user: str, password: str, rest: str
) -> None:
    url = f"{scheme}://{user}:{password}@host.example{rest}"
    clean = redact(f"cannot connect to {url} (refused)")
    assert clean.startswith(f"cannot connect to {scheme}://{user}:***@host.example")
    assert clean.endswith(" (refused)")
