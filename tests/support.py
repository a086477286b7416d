"""What the platform tests share: small agents, and a bridge on a running emulator."""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import lark, wecom, weixin
from trio_chatbridge.testing import LarkEmulator, WeComEmulator, running_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def streamer(pause: float) -> cb.Agent:
    """An agent that streams the batch back word by word, ``pause`` seconds apart."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in batch.text.split():
                await out.write(word + " ")
                await trio.sleep(pause)

    return agent


def quick_bridge(connector: Connector, agent: cb.Agent, **options: Any) -> cb.Bridge:
    """A bridge with quick test defaults: a memory store, a 1 s debounce window, a 1 s
    backoff without jitter."""
    options.setdefault("store", cb.MemoryStore())
    options.setdefault("debounce", cb.Debounce(window=1.0))
    options.setdefault("backoff", cb.Backoff(initial=1.0, jitter=0.0))
    return cb.Bridge([connector], agent, **options)


@asynccontextmanager
async def emulator_bridge(
    emulator: LarkEmulator | WeComEmulator,
    connector: Callable[[], Connector],
    agent: cb.Agent,
    **options: Any,
) -> AsyncIterator[cb.Bridge]:
    """Run ``emulator`` (in memory) and a :func:`quick_bridge` on ``connector()``. Failed agent
    runs are only counted (many tests here fail them on purpose), unless
    ``fail_on_agent_error=True``; ``start_timeout`` as ``running_bridge``'s."""
    fail = options.pop("fail_on_agent_error", False)
    start_timeout = options.pop("start_timeout", 60)
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        bridge = quick_bridge(connector(), agent, **options)
        async with running_bridge(
            bridge, fail_on_agent_error=fail, start_timeout=start_timeout
        ) as bridge:
            yield bridge
        nursery.cancel_scope.cancel()


# Scripts for property tests of agents: (user 0-2, what the agent does, seconds to the next).
agent_scripts = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["ok", "slow", "boom"]), st.floats(0, 4)),
    max_size=12,
)
on_busy_modes = st.sampled_from(["queue", "interrupt"])
run_timeouts = st.sampled_from([None, 2.5])


def json_trees(
    scalars: st.SearchStrategy[Any] | None = None, *, size: int = 4, leaves: int = 20
) -> st.SearchStrategy[Any]:
    """Any JSON value: ``scalars`` (by default null, booleans, integers, floats and short text)
    nested in arrays and objects of at most ``size`` items, ``leaves`` scalars at most."""
    default = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    base = default if scalars is None else scalars

    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        # A named function, not a lambda: hypothesis reads an extend function's source to check
        # that it uses its argument, and finds a lambda's text only by its line (a misread once
        # gave its deprecation warning, an error in this suite).
        return st.lists(inner, max_size=size) | st.dictionaries(
            st.text(max_size=8), inner, max_size=size
        )

    return st.recursive(base, containers, max_leaves=leaves)


def fickle_streamer(written: list[str]) -> cb.Agent:
    """Streams three words; the batch's latest text says how: "ok", "slow" (2 s a word) or
    "boom" (raises after the first). What each run wrote, however it ended, goes to
    ``written``."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            try:
                for word in ("one", "two", "three"):
                    await out.write(word + " ")
                    await trio.sleep(2.0 if batch.latest.text == "slow" else 0.3)
                    if batch.latest.text == "boom":
                        raise RuntimeError("boom")
            finally:
                written.append(out.text)

    return agent


@asynccontextmanager
async def open_lives(
    make: Callable[[], cb.Bridge], emulator: LarkEmulator | WeComEmulator | None = None
) -> AsyncIterator[Lives]:
    """Run ``emulator`` (if it needs running) and a first life of ``make()``; stop the
    current life gracefully on exit."""
    async with trio.open_nursery() as nursery:
        if emulator is not None:
            await nursery.start(emulator.run)
        lives = Lives(nursery, make)
        await lives.start()
        yield lives
        await lives.stop()
        nursery.cancel_scope.cancel()


class Lives:
    """A bridge a test can restart, gracefully or killed (cancelled mid-run), as a process
    would be: each life is a new :class:`Bridge` from ``make``, in ``nursery``."""

    def __init__(self, nursery: trio.Nursery, make: Callable[[], cb.Bridge]) -> None:
        self._nursery = nursery
        self._make = make
        self.bridge = make()
        self._ended = trio.Event()
        self._scope = trio.CancelScope()

    async def start(self) -> None:
        self._scope = await self._nursery.start(self._live, self.bridge, self._ended)

    async def restart(self, *, kill: bool) -> None:
        """End this life (killed: cancelled at once), then start the next one."""
        await self.stop(kill=kill)
        self.bridge, self._ended = self._make(), trio.Event()
        await self.start()

    async def stop(self, *, kill: bool = False) -> None:
        if kill:
            self._scope.cancel()
        else:
            self.bridge.shutdown()
        await self._ended.wait()

    @staticmethod
    async def _live(
        bridge: cb.Bridge, ended: trio.Event, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                task_status.started(scope)
        ended.set()


def emulated_connector(info: dict[str, Any], **weixin_options: Any) -> Connector:
    """A real connector for what ``emulate <platform>`` printed (over loopback);
    ``weixin_options`` go to a WeChat connector (``rate_limit=...``)."""
    if info["platform"] == "weixin":
        return weixin.LongPoll(
            account="bot",
            token=info["token"],
            base_url=info["base_url"],
            cdn_base_url=info["cdn_base_url"],
            **weixin_options,
        )
    if info["platform"] == "wecom":
        return wecom.LongConnection(
            bot_id=info["bot_id"], secret=info["secret"], url=info["ws_url"]
        )
    return lark.LongConnection(
        app_id=info["app_id"], app_secret=info["app_secret"], domain=info["domain"]
    )


def lark_message_event(
    text: str = "@_user_1 hi",
    *,
    mention_bot: bool = True,
    sender: str = "ou_1",
    sender_type: str = "user",
    message_id: str = "om_1",
    chat: str = "oc_1",
    chat_type: str = "group",
    created: str | None = None,
) -> dict[str, Any]:
    """A Lark ``im.message.receive_v1`` envelope (event id ``e1``) of a text message, as
    docs/protocols/lark.md describes it: ``text`` from ``sender`` in ``chat``; with
    ``mention_bot``, the text's ``@_user_1`` names the bot (``ou_bot``); ``created``, the
    message's ``create_time`` (milliseconds, a string) when given."""
    message: dict[str, Any] = {
        "message_id": message_id,
        "chat_id": chat,
        "chat_type": chat_type,
        "message_type": "text",
        "content": json.dumps({"text": text}),
    }
    if created is not None:
        message["create_time"] = created
    if mention_bot:
        message["mentions"] = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "Bot"}]
    return {
        "schema": "2.0",
        "header": {"event_id": "e1", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": sender_type},
            "message": message,
        },
    }


# -- sans-I/O protocol cores -------------------------------------------------------------------

IO_LIBRARIES = {"trio", "httpx", "trio_websocket", "anyio", "socket", "asyncio"}


def runtime_imports(module: str) -> tuple[Path, set[str]]:
    """The modules ``module`` imports when it runs (not under ``if TYPE_CHECKING:``)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                if node.module:
                    found.add(base)
                else:  # from . import _x: the modules themselves
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and not isinstance(node, ast.FunctionDef):
                    visit([n for n in inner if isinstance(n, ast.stmt)])

    visit(tree.body)
    return Path(spec.origin), found


def modules_a_core_runs(core: str) -> set[str]:
    """Every module of ours that the protocol core ``core`` runs, itself included, each
    checked to import no I/O library (:data:`IO_LIBRARIES`) when it runs. A package's
    ``__init__`` is its public surface, not the core's code, and is not followed."""
    seen: set[str] = set()
    todo = [core]
    while todo:
        module = todo.pop()
        spec = importlib.util.find_spec(module)
        if module in seen or spec is None or spec.submodule_search_locations:
            continue
        seen.add(module)
        path, imported = runtime_imports(module)
        top = {name.split(".")[0] for name in imported}
        assert not top & IO_LIBRARIES, f"{path} imports {sorted(top & IO_LIBRARIES)}"
        todo += [name for name in imported if name.startswith("trio_chatbridge.")]
    return seen
