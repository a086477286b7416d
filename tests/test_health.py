"""The service endpoint's answers, in process, on loopback."""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

import trio_chatbridge as cb
from trio_chatbridge._config import HttpConfig
from trio_chatbridge._health import BACKLOG
from trio_chatbridge._service import run_service
from trio_chatbridge.testing import FakeConnector


async def test_readyz_and_the_stop_line_show_messages_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``undecodable`` was in ``stats()`` and ``/metrics`` only: /readyz, what an operator
    looks at first, and the service's last lines said nothing of a message set aside."""

    async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.text)

    chat = FakeConnector()
    store = cb.SQLiteStore(tmp_path / "j.db")
    bridge = cb.Bridge([chat], echo, store=store, debounce=cb.Debounce(window=0))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            http = HttpConfig(listen="127.0.0.1:0")
            (url,) = await nursery.start(partial(run_service, bridge, http=http))
            before = (await client.get(url + "/readyz")).json()
            chat.deliver(chat.message("lone \ud800", id="bad"))
            await chat.say("good")
            assert (await chat.next_reply()).text == "good"
            after = (await client.get(url + "/readyz")).json()
            bridge.shutdown()
    assert (before["undecodable"], after["undecodable"]) == (0, 1)
    stop = [
        r
        for r in caplog.records
        if "set aside" in r.getMessage() and r.name == "trio_chatbridge.service"
    ]
    assert len(stop) == 1 and stop[0].levelno == logging.WARNING and "1 " in stop[0].getMessage()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read a backlog")
async def test_the_endpoint_listens_with_room_for_a_burst_of_connections() -> None:
    """hypercorn listens with a backlog of 100: a burst of webhook callbacks (each a new
    connection) over that overflowed the kernel's queue, and every client past it retried its
    connect a second later. The endpoint asks for ``BACKLOG`` (the kernel caps it at
    ``net.core.somaxconn``)."""

    async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.text)

    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            http = HttpConfig(listen="127.0.0.1:0")
            (url,) = await nursery.start(partial(run_service, bridge, http=http))
            port = url.rsplit(":", 1)[1]
            listing = await trio.run_process(
                ["ss", "-ltnH", f"sport = :{port}"], capture_stdout=True
            )
            bridge.shutdown()
    state, _, backlog, *_ = listing.stdout.decode().split()
    somaxconn = int(await trio.Path("/proc/sys/net/core/somaxconn").read_text())
    assert state == "LISTEN" and int(backlog) == min(BACKLOG, somaxconn) > 100
