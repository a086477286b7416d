"""WeChat benchmarks: connector throughput from the loopback emulator, and idle-account memory.

The emulator runs in its own process (``python -m trio_chatbridge emulate weixin``), as a
real server would, so that the client side is what the two loops compare.
"""

from __future__ import annotations

import base64
import functools
import gc
import json
import os
import secrets
import subprocess
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
import msgspec
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._longpoll import exchange
from trio_chatbridge.connectors import Page
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol
from trio_chatbridge.testing import WeixinEmulator

from ._util import (
    INBOX_DEADLINE,
    REPEAT,
    CountingStore,
    OpcodeCensus,
    best_of_fresh,
    peak_rss_mib,
    post_burst,
    report,
    time_into_inbox,
    versus_raw,
)

MESSAGES = 20_000
ACCOUNTS = 1_000
CALLGRIND: Final = bool(os.environ.get("CALLGRIND"))
"""Set (``CALLGRIND=1``) when this process runs under callgrind: see :class:`_Instrumented`."""


async def _load(info: dict[str, Any]) -> None:
    burst = [{"user": f"user{i % 500}@im.wechat", "text": f"message {i}"} for i in range(MESSAGES)]
    await post_burst(info, burst)


def _poll_headers(token: str) -> dict[str, str]:
    """The headers every getupdates poll carries (docs/protocols/weixin.md#headers), written
    out: the app id and version, JSON, the token type, a fresh random UIN, the bearer token."""
    uin = base64.b64encode(str(secrets.randbits(32)).encode()).decode()
    return {
        "iLink-App-Id": "bot",
        "iLink-App-ClientVersion": "132102",
        "Content-Type": "application/json",
        "AuthorizationType": "ilink_bot_token",
        "X-WECHAT-UIN": uin,
        "Authorization": f"Bearer {token}",
    }


_BASE_INFO: Final = {"channel_version": "2.4.6", "bot_agent": "trio_chatbridge/0.1"}


class _Page(msgspec.Struct, gc=False):
    """A getupdates answer as the floor reads it: the cursor, and each message's bytes."""

    get_updates_buf: str = ""
    msgs: list[msgspec.Raw] = []


_page: Final = msgspec.json.Decoder(_Page)


async def _raw_httpx_loop(
    info: dict[str, Any], *, keep: bool = False, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The baseline: the same polls as the connector's (its headers and body), the same
    client, each page decoded, its messages landing in a list, the cursor advanced. Nothing
    else: no journal, no inbox, no context tokens saved. Timed by ``clock`` from the first
    poll (the client is made before: see :func:`_connector_into_inbox`).

    ``keep``: each message's ``Message`` is built (``weixin.to_message`` on each message's
    bytes, split out of the page by msgspec, the cheapest way to a ``Message``) and kept
    instead of its decoded dict: the floor, see versus_raw.
    """
    kept: list[Any] = []
    url = info["base_url"] + "ilink/bot/getupdates"
    async with httpx.AsyncClient() as http:
        cursor = ""
        start = clock()
        while len(kept) < MESSAGES:
            response = await http.post(
                url,
                content=json.dumps({"get_updates_buf": cursor, "base_info": _BASE_INFO}).encode(),
                headers=_poll_headers(info["token"]),
            )
            if keep:
                page = _page.decode(response.content)
                kept += [weixin.to_message("bot", bytes(raw)) for raw in page.msgs]
                cursor = page.get_updates_buf
            else:
                answer = response.json()
                kept += answer["msgs"]
                cursor = answer["get_updates_buf"]
        return clock() - start


async def _connector_into_inbox(
    info: dict[str, Any], *, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The connector: the same polls, plus parsing, the journal and the inbox (MemoryStore),
    timed by ``clock`` from the bridge's start until the journal holds every message.

    Typing is off: agents never run here.
    """
    store = CountingStore(MESSAGES)
    # Its httpx client made up front, like the baseline's (building one loads the system's
    # CA certificates: tens of milliseconds that are no part of a poll loop).
    async with httpx.AsyncClient() as http:
        connector = weixin.LongPoll(
            account="bot", token=info["token"], base_url=info["base_url"], typing=False, http=http
        )
        # under callgrind, everything takes about a hundred times as long
        deadline = INBOX_DEADLINE * (100 if CALLGRIND else 1)
        return await time_into_inbox(connector, store, clock, deadline)


def bench_throughput() -> None:
    rows = versus_raw(
        "weixin",
        _load,
        _raw_httpx_loop,
        _connector_into_inbox,
        MESSAGES,
        "raw httpx poll loop",
        floor=functools.partial(_raw_httpx_loop, keep=True),
    )
    # By this process's CPU over the same spans as the wall times (the client's making, which
    # loads the CA store, and the bridge's teardown left out of both): on a shared machine,
    # wall time mostly measures the other processes.
    cpu = functools.partial(_raw_httpx_loop, clock=time.process_time)
    raw_cpu, ours_cpu, floor_cpu = best_of_fresh(
        "weixin",
        _load,
        [
            cpu,
            functools.partial(_connector_into_inbox, clock=time.process_time),
            functools.partial(cpu, keep=True),
        ],
    )
    per = [f"{t / MESSAGES * 1e6:.1f} us" for t in (raw_cpu, ours_cpu, floor_cpu)]
    cpu_rows = [
        (
            "client CPU per message (best of 3)",
            f"raw {per[0]}, connector {per[1]}: {raw_cpu / ours_cpu:.2f}x",
        ),
        ("same, the floor", f"{per[2]}: {raw_cpu / floor_cpu:.2f}x"),
    ]
    report(
        f"weixin: {MESSAGES:,} messages from the loopback emulator (own process), pages of 100",
        [
            *rows,
            *cpu_rows,
            ("peak RSS of this process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


async def _through_mapping(
    info: dict[str, Any], *, receive: bool = False, clock: Callable[[], float] = time.perf_counter
) -> float:
    """A stage between the raw loop and the connector: the core's polls sent through the
    driver's HTTP mapping (``exchange``), each page decoded by ``json.loads`` and kept as the
    raw loop keeps it; with ``receive``, read by the core instead (``Poller.receive``: each
    message's ``Message``, the context tokens, the cursor) and its messages kept. No journal,
    no inbox, nothing stored. Timed by ``clock`` from the first poll."""
    kept: list[Any] = []
    core = weixin_protocol.Poller(
        info["token"], info["base_url"], functools.partial(weixin.to_message, "bot")
    )
    async with httpx.AsyncClient() as http:
        start = clock()
        while len(kept) < MESSAGES:
            body = await exchange(http, core.request(), "weixin")
            assert body is not None  # the emulator answers at once while messages wait
            if receive:
                page = core.receive(body, 0.0)
                assert isinstance(page, Page)
                kept += page.messages
                core.commit(page)
            else:
                answer = json.loads(body)
                kept += answer["msgs"]
                core.cursor = answer["get_updates_buf"]
        return clock() - start


class _Instrumented:
    """A clock for the stage loops: this process's CPU time, and, when the process runs under
    ``valgrind --tool=callgrind --instr-atstart=no`` (``CALLGRIND=1`` in its environment),
    callgrind's instrumentation switched on at the first reading and, at the second, off and
    dumped as ``name``: instruction and cache figures over exactly the timed span (making
    the HTTP client, which loads the CA store, left out: 11.7k instructions a message here)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.readings = 0

    def __call__(self) -> float:
        if CALLGRIND:
            pid = str(os.getpid())
            if self.readings % 2 == 0:
                subprocess.run(
                    ["callgrind_control", "-i", "on", pid], check=True, capture_output=True
                )
            else:
                subprocess.run(
                    ["callgrind_control", "-i", "off", pid], check=True, capture_output=True
                )
                subprocess.run(
                    ["callgrind_control", "-d", self.name, pid], check=True, capture_output=True
                )
        self.readings += 1
        return time.process_time()


_STAGES: Final[dict[str, tuple[str, Callable[..., Awaitable[float]]]]] = {
    # callgrind's dump name (letters only: callgrind_control drops a name with a quote in it)
    # -> the row's label and the loop
    "raw": ("raw loop (json.loads)", _raw_httpx_loop),
    "mapping": ("+ the driver's HTTP mapping", _through_mapping),
    "receive": (
        "+ the core's receive (Message, tokens, cursor)",
        functools.partial(_through_mapping, receive=True),
    ),
    "floor": ("floor (raw loop + to_message)", functools.partial(_raw_httpx_loop, keep=True)),
    "connector": ("connector into the inbox", _connector_into_inbox),
}


def bench_stages() -> None:
    """Client CPU per message from the raw loop to the connector, stage by stage (best of
    three fresh emulators each; under callgrind, one profile per stage)."""
    loops = [
        functools.partial(loop, clock=_Instrumented(name)) for name, (_, loop) in _STAGES.items()
    ]
    best = best_of_fresh("weixin", _load, loops, repeat=1 if CALLGRIND else REPEAT)
    raw = best[0]
    report(
        f"weixin stages: client CPU per message, {MESSAGES:,} messages, pages of 100",
        [
            (label, f"{t / MESSAGES * 1e6:.1f} us: {raw / t:.2f}x")
            for (label, _), t in zip(_STAGES.values(), best, strict=True)
        ],
    )


def bench_opcodes() -> None:
    """Python bytecode instructions per message in each stage (one traced run each), by
    function: where the connector's Python steps are, against the raw loop's."""
    census = {name: OpcodeCensus() for name in _STAGES}
    best_of_fresh(
        "weixin",
        _load,
        [functools.partial(loop, clock=census[name]) for name, (_, loop) in _STAGES.items()],
        repeat=1,
    )
    for name, (label, _) in _STAGES.items():
        report(f"weixin opcodes per message: {label}", census[name].rows(MESSAGES))


def bench_idle_accounts() -> None:
    """Memory per account while 1,000 accounts sit in a long poll (in-memory emulator)."""
    emulator = WeixinEmulator(hold=3600.0, record_requests=False)
    per_account: dict[str, float] = {}

    async def park(shared: bool) -> None:
        async with httpx.AsyncClient(transport=emulator.transport()) as http:
            connectors = [
                emulator.connector(f"acct{i}", **({"http": http} if shared else {}))
                for i in range(ACCOUNTS)
            ]
            bridge = cb.Bridge(connectors, _noop, store=cb.MemoryStore())
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                await trio.testing.wait_all_tasks_blocked()  # every account is in its poll
                gc.collect()
                per_account["shared" if shared else "own"] = (
                    tracemalloc.get_traced_memory()[0] - before
                ) / ACCOUNTS
                tracemalloc.stop()
                nursery.cancel_scope.cancel()

    trio.run(park, False)
    trio.run(park, True)
    report(
        f"weixin: {ACCOUNTS:,} idle accounts, each parked in a long poll (in-memory emulator)",
        [
            ("per account, own httpx client", f"{per_account['own'] / 1024:.1f} KiB"),
            ("per account, one shared client", f"{per_account['shared'] / 1024:.1f} KiB"),
            ("peak RSS of the process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


async def _noop(batch: cb.Batch, reply: cb.Reply) -> None:
    pass


BENCHMARKS = {
    "weixin": bench_throughput,
    "weixin-idle": bench_idle_accounts,
    "weixin-stages": bench_stages,
    "weixin-opcodes": bench_opcodes,
}
