"""Failover under chaos, on a real redis-server: bridges sharing accounts through Redis.

Two or three bridges serve the same two accounts, each through a proxy of its own on
127.0.0.1 to one Redis (persistent: ``appendfsync always``). A platform of the test's own
delivers each account's messages at least once to whichever bridge runs the account's
connector (a message leaves its queue only once ``put`` returned), and redelivers some it saw
acknowledged. Random events meanwhile: a bridge cancelled outright at a random moment (and
started again, as a new process would be), a bridge frozen past its lease (its proxy holds
every byte both ways for 1.5 TTL, then lets them through: the late writes reach Redis after
another bridge took the account), a bridge stalled past its store's timeout but not its
lease (its writes end unknown and land late), its connections dropped by its proxy mid-command,
Redis killed (SIGKILL) and restarted from its append-only file, or empty (its disk lost).
Then every bridge is let run until all is quiet, and:

- every message said reached an agent at least once (but those said before Redis came back
  empty: accepted and acknowledged, they were lost with it), and nothing is left pending;
- no message reached an agent once its batch was marked done (a stale holder's late done
  mark would let a replay through after it: fencing refuses it);
- at most one bridge ran an account's connector at a time;
- in each chat, messages first reached an agent in the order they were said (but those lost
  with Redis, which the platform may offer again later).

Real time, unavoidably: leases expire on Redis's clock (TTL 1.5 s). Every wait is bounded;
an example takes up to a few seconds: the default run's ten (derandomized) take about 17 s
at a load average of 6; ``nox -s soak`` (``SOAK_SESSIONS`` set) runs thirty random ones.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given, settings
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.stores import StaleLeaseError, journal_key
from trio_chatbridge.testing import RedisServer, redis_server

TTL = 1.5  # seconds, real: Redis's clock
TIMEOUT = 0.3  # seconds the bridges' stores wait for each reply
FREEZE = TTL * 1.5  # seconds a frozen bridge's proxy holds its bytes: its leases expire
STALL = 0.5  # seconds a stalled one's: its requests time out, its leases hold
ACCOUNTS = ("a", "b")
CHATS = ("x", "y")
QUIET_WITHIN = 30.0  # seconds, real, for everything said to be handled once the chaos ends
EXAMPLE_WITHIN = 90.0  # seconds, real: an example that hangs fails
EXAMPLES = 30 if "SOAK_SESSIONS" in os.environ else 10


@attrs.define
class Proxy:
    """A TCP proxy on 127.0.0.1 to one Redis, for one bridge: it can drop every connection
    (mid-command) or freeze (hold every byte, both ways, until thawed)."""

    port: int
    frozen: bool = False
    _thawed: trio.Event = attrs.Factory(trio.Event)
    _connections: set[trio.CancelScope] = attrs.Factory(set)

    def freeze(self) -> None:
        self.frozen, self._thawed = True, trio.Event()

    def thaw(self) -> None:
        self.frozen = False
        self._thawed.set()

    def drop(self) -> None:
        for scope in self._connections:
            scope.cancel()

    async def _flowing(self) -> None:
        while self.frozen:
            await self._thawed.wait()

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        """Forward until ``source`` ends; what was read is sent on even after a freeze (the
        late bytes a paused process still had in its socket)."""
        try:
            async for data in source:
                await self._flowing()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _serve(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:  # Redis is down: the client sees its connection close
                return
            try:
                async with client, server, trio.open_nursery() as nursery:
                    for source, sink in ((client, server), (server, client)):

                        async def one_way(
                            source: trio.SocketStream, sink: trio.SocketStream
                        ) -> None:
                            await self._pipe(source, sink)
                            nursery.cancel_scope.cancel()  # one side closed: close both

                        nursery.start_soon(one_way, source, sink)
            finally:
                self._connections.discard(scope)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """The proxy's URL while it runs."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
            )
            yield f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/0"
            nursery.cancel_scope.cancel()


def user_message(account: str, number: int, chat: str) -> cb.Message:
    """The ``number``-th message users said (over all accounts), id ``m<number>``."""
    return cb.Message(
        platform="chaos",
        account=account,
        id=f"m{number}",
        chat=cb.Chat(chat, "direct"),
        sender=cb.Sender("user"),
        parts=(cb.Text(str(number)),),
        timestamp=0.0,
        reply_handle=cb.Handle.of(chat=chat),
    )


@attrs.define
class Platform:
    """What the users said, per account, and what is not acknowledged yet (in order)."""

    said: dict[str, list[cb.Message]] = attrs.Factory(dict)
    queues: dict[str, deque[cb.Message]] = attrs.Factory(dict)
    running: dict[str, object] = attrs.Factory(dict)
    """The connector running each account now."""
    overlaps: list[str] = attrs.Factory(list)
    """Connectors started while another bridge ran the account: none, even just after Redis
    came back empty (acquisitions are held off until every old holder has stopped)."""
    emptied_at: float = -math.inf
    """When Redis last came back empty (inf while it restarts)."""
    lost: set[str] = attrs.Factory(set)
    """Messages said before Redis lost its data (restarted empty): they may never arrive."""
    arrived: trio.Event = attrs.Factory(trio.Event)

    def say(self, account: str, chat: str) -> None:
        message = user_message(account, sum(len(m) for m in self.said.values()), chat)
        self.said.setdefault(account, []).append(message)
        self.deliver(account, message)

    def redeliver(self, account: str) -> None:
        """An acknowledged message of the account, offered again (the oldest one not queued)."""
        for message in self.said.get(account, []):
            if message not in self.queues[account]:
                self.deliver(account, message)
                return

    def deliver(self, account: str, message: cb.Message) -> None:
        self.queues.setdefault(account, deque()).append(message)
        self.arrived.set()
        self.arrived = trio.Event()


class ChaosConnector(Connector):
    """The platform's connection for one account in one bridge: at least once, in order."""

    def __init__(self, platform: Platform, account: str) -> None:
        self.platform = "chaos"
        self.account = account
        self.world = platform

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        world, account = self.world, self.account
        if world.running.get(account) is not None:
            world.overlaps.append(
                f"{account}: started while another bridge ran it, "
                f"{trio.current_time() - world.emptied_at:.2f} s after Redis came back empty"
            )
        world.running[account] = self
        try:
            task_status.started()
            while True:
                queue = world.queues.setdefault(account, deque())
                if not queue:
                    await world.arrived.wait()
                    continue
                head = queue[0]
                await self.ctx.put([head])
                if queue and queue[0] is head:
                    queue.popleft()  # acknowledged only once the inbox accepted it
        finally:
            if world.running.get(account) is self:
                del world.running[account]

    async def send(self, target: cb.Message, text: str) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define
class Agent:
    """Records each batch; checks, as it starts, that none of its messages is done already."""

    observer: cb.RedisStore
    batches: list[list[cb.Message]] = attrs.Factory(list)
    after_done: list[str] = attrs.Factory(list)

    async def __call__(self, batch: cb.Batch, reply: cb.Reply) -> None:
        self.batches.append(list(batch.messages))
        for message in batch.messages:
            try:
                entry = await self.observer.journal_entry(journal_key(message))
            except cb.StoreError:
                continue  # Redis restarting: this look is skipped
            if entry is not None and entry.state == "done":
                self.after_done.append(message.id)
        await reply.send("ok")


@attrs.define
class Slot:
    """Where one bridge runs (a process): its proxy, and the bridge running now."""

    proxy: Proxy
    url: str = ""
    scope: trio.CancelScope | None = None
    bridge: cb.Bridge | None = None


event = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(ACCOUNTS), st.sampled_from(CHATS)),
    st.tuples(st.just("say"), st.sampled_from(ACCOUNTS), st.sampled_from(CHATS)),
    st.tuples(st.just("redeliver"), st.sampled_from(ACCOUNTS), st.just("")),
    st.tuples(st.just("wait"), st.just(""), st.just("")),
    st.tuples(
        st.sampled_from(["cancel", "freeze", "stall", "drop"]), st.integers(0, 2), st.just("")
    ),
    st.tuples(st.just("restart redis"), st.sampled_from([0, 1]), st.just("")),  # 1: empty
)


async def chaos(
    server: RedisServer, bridges: int, events: list[tuple[str, str | int, str]]
) -> tuple[Platform, Agent]:
    prefix = f"chaos-{uuid.uuid4().hex}:"
    world = Platform()
    observer = cb.RedisStore.from_url(server.url, prefix=prefix, timeout=1)
    agent = Agent(observer)
    slots = [Slot(Proxy(server.port)) for _ in range(bridges)]

    async def life(slot: Slot, task_status: trio.TaskStatus[None]) -> None:
        """One process: a bridge until cancelled (outright). A bridge whose store does not
        open (Redis unreachable) raises at its start: started again, as a service manager
        would. Started once a bridge's pipeline accepts work."""
        with trio.CancelScope() as slot.scope:
            while True:
                bridge = cb.Bridge(
                    [ChaosConnector(world, account) for account in ACCOUNTS],
                    agent,
                    store=cb.RedisStore.from_url(slot.url, prefix=prefix, timeout=TIMEOUT),
                    leases=cb.Leases(ttl=TTL),
                    debounce=cb.Debounce(window=0.01, max_delay=0.05),
                    backoff=cb.Backoff(initial=0.05, maximum=0.2),
                )
                slot.bridge = bridge
                failed = False
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(bridge.run)
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                except* cb.StoreError:
                    assert task_status is not trio.TASK_STATUS_IGNORED  # only at the start
                    failed = True
                if not failed:
                    return
                await trio.sleep(0.1)

    async def frozen(slot: Slot, seconds: float) -> None:
        slot.proxy.freeze()
        await trio.sleep(seconds)
        slot.proxy.thaw()

    async with observer, trio.open_nursery() as proxies:
        async with trio.open_nursery() as nursery:
            for slot in slots:
                slot.url = await proxies.start(_serve_proxy, slot.proxy)
                await nursery.start(life, slot)
            for account in ACCOUNTS:  # each store's first write for the account was made
                world.say(account, CHATS[0])
            with trio.fail_after(QUIET_WITHIN):
                while not await _quiet(world, agent, observer):  # noqa: ASYNC110 (a poll of Redis)
                    await trio.sleep(0.1)
            for kind, what, chat in events:
                if kind == "say":
                    world.say(str(what), chat)
                elif kind == "redeliver":
                    world.redeliver(str(what))
                elif kind == "wait":
                    await trio.sleep(TTL / 2)
                elif kind == "restart redis":
                    if what == 1:
                        world.emptied_at = math.inf  # until it is back
                    await trio.to_thread.run_sync(partial(server.restart, empty=what == 1))
                    if what == 1:  # what was journaled is gone: the platform saw it acknowledged
                        world.emptied_at = trio.current_time()
                        world.lost = {m.id for messages in world.said.values() for m in messages}
                else:
                    slot = slots[int(what) % bridges]
                    if kind == "cancel":
                        assert slot.scope is not None
                        slot.scope.cancel()
                        await nursery.start(life, slot)
                    elif kind in ("freeze", "stall") and not slot.proxy.frozen:
                        nursery.start_soon(frozen, slot, FREEZE if kind == "freeze" else STALL)
                    elif kind == "drop":
                        slot.proxy.drop()
                await trio.sleep(0.05)
            with trio.fail_after(QUIET_WITHIN):
                while not await _quiet(world, agent, observer):  # noqa: ASYNC110 (a poll of Redis)
                    await trio.sleep(0.1)
            for slot in slots:
                assert slot.bridge is not None
                slot.bridge.shutdown()
        proxies.cancel_scope.cancel()
    return world, agent


async def bounded(run: Awaitable[tuple[Platform, Agent]]) -> tuple[Platform, Agent]:
    with trio.fail_after(EXAMPLE_WITHIN):
        return await run


async def _serve_proxy(proxy: Proxy, task_status: trio.TaskStatus[str]) -> None:
    async with proxy.running() as url:
        task_status.started(url)
        await trio.sleep_forever()  # until the bridges stopped


async def _quiet(world: Platform, agent: Agent, observer: cb.RedisStore) -> bool:
    """Everything said reached an agent, nothing is queued, nothing is pending."""
    reached = {m.id for batch in agent.batches for m in batch}
    said = {m.id for messages in world.said.values() for m in messages} - world.lost
    if not said <= reached or any(world.queues.values()):
        return False
    try:
        return not await observer.journal_pending()
    except cb.StoreError:
        return False


@pytest.mark.slow
@pytest.mark.soak
@settings(max_examples=EXAMPLES)
@given(bridges=st.integers(2, 3), events=st.lists(event, min_size=4, max_size=14))
def test_failover_loses_nothing_and_handles_nothing_again_once_done(
    bridges: int, events: list[tuple[str, str | int, str]]
) -> None:
    require_redis()
    with (
        tempfile.TemporaryDirectory() as directory,
        redis_server(Path(directory), persistent=True) as server,
    ):
        world, agent = trio.run(bounded, chaos(server, bridges, events))
    assert world.overlaps == []
    assert agent.after_done == []
    first_seen: dict[tuple[str, str], list[int]] = {}
    for batch in agent.batches:
        for message in batch:
            seen = first_seen.setdefault((message.account, message.chat.id), [])
            if int(message.id[1:]) not in seen and message.id not in world.lost:
                seen.append(int(message.id[1:]))
    for session, seen in first_seen.items():
        assert seen == sorted(seen), session


async def test_a_frozen_holders_late_done_mark_is_refused(redis_node: RedisServer) -> None:
    """The chaos above cannot always see a stale write land (the replay it would spoil may
    come first), so one directly: a holder's done mark held on the wire past its lease, the
    lease taken by another meanwhile, then let through: Redis refuses it, and the message
    stays pending for the new holder. Real time: a 0.3 s lease, waited out."""
    prefix = f"late-{uuid.uuid4().hex}:"
    message = user_message("a", 0, "x")
    proxy = Proxy(redis_node.port)
    with trio.fail_after(20):
        async with proxy.running() as url, trio.open_nursery() as nursery:
            stale = cb.RedisStore.from_url(url, prefix=prefix, timeout=5)
            fresh = cb.RedisStore.from_url(redis_node.url, prefix=prefix)
            async with stale, fresh:
                assert await stale.acquire_lease("chaos:a", "stale", ttl=0.3)
                assert await stale.journal_add([message]) == [True]
                refused: list[BaseException] = []

                async def mark_done() -> None:
                    try:
                        await stale.journal_done([message])
                    except StaleLeaseError as exc:
                        refused.append(exc)

                proxy.freeze()
                nursery.start_soon(mark_done)
                await trio.sleep(0.4)  # real time: Redis expires the lease
                assert await fresh.acquire_lease("chaos:a", "fresh", ttl=10)
                proxy.thaw()
                with trio.fail_after(5):
                    while not refused:  # noqa: ASYNC110 (the late write's answer)
                        await trio.sleep(0.01)
                assert await fresh.journal_pending_of("chaos", "a") == [message]
                nursery.cancel_scope.cancel()
