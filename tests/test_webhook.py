"""WeCom webhook hardening: replays, timestamps, sizes, and no 500 on any input."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given
from support import echo, json_trees, quick_bridge

import trio_chatbridge as cb
from trio_chatbridge.platforms import wecom
from trio_chatbridge.platforms.wecom import _webhook
from trio_chatbridge.testing import WeComEmulator, running_bridge

NOW = 1_700_000_000.0  # the webhook's wall clock in these tests (seconds)
MESSAGE = {"msgid": "m1", "from": {"userid": "u"}, "msgtype": "text", "text": {"content": "hi"}}
ENTER = {"msgid": "e1", "from": {"userid": "u"}, "msgtype": "event"}
ENTER["event"] = {"eventtype": "enter_chat"}


async def call(app: Any, method: str, query: bytes, body: bytes) -> tuple[int, bytes]:
    """One ASGI request, the body in 64 KiB pieces; returns the status and the body."""
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "query_string": query, "headers": []}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


def signed(
    emu: WeComEmulator,
    plaintext: str,
    *,
    timestamp: str = str(int(NOW)),
    nonce: str | None = None,
) -> tuple[bytes, bytes]:
    """A POST's query and body as WeCom sends them: ``plaintext`` encrypted and signed."""
    encrypt = emu.crypto.encrypt(plaintext)
    nonce = nonce or secrets.token_hex(5)
    query = {
        "msg_signature": emu.crypto.signature(timestamp, nonce, encrypt),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    return urlencode(query).encode(), json.dumps({"encrypt": encrypt}).encode()


@asynccontextmanager
async def webhook_bridge(
    clock: Callable[[], float] = lambda: NOW,
    *,
    agent: cb.Agent = echo,
    store: cb.Store | None = None,
    bridge_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[WeComEmulator, wecom.Webhook, cb.Bridge]]:
    """A running bridge of ``agent`` on a webhook (``options`` its own, ``bridge_options``
    the bridge's), the emulator."""
    emu = WeComEmulator()
    hook = wecom.Webhook(
        bot_id=emu.bot_id,
        token=emu.token,
        encoding_aes_key=emu.encoding_aes_key,
        wall_clock=clock,
        **options,
    )
    bridge = quick_bridge(hook, agent, store=store or cb.MemoryStore(), **(bridge_options or {}))
    async with running_bridge(bridge, fail_on_agent_error=False):  # (failures tested too)
        yield emu, hook, bridge


def refused(bridge: cb.Bridge) -> int:
    return bridge.stats().other.get("wecom.refused_requests", 0)


@pytest.mark.parametrize("callback", [MESSAGE, ENTER], ids=["message", "enter_chat"])
async def test_a_replayed_request_is_refused(
    autojump_clock: trio.testing.MockClock, callback: dict[str, Any]
) -> None:
    async with webhook_bridge() as (emu, hook, bridge):
        query, body = signed(emu, json.dumps(callback))
        first = await call(hook.asgi, "POST", query, body)
        again = await call(hook.asgi, "POST", query, body)
        await trio.sleep(5)
        stats = bridge.stats()
    assert first[0] == 200
    assert again == (403, b"replayed request (nonce already used)")
    assert stats.received == (1 if callback is MESSAGE else 0)
    assert refused(bridge) == 1


@pytest.mark.parametrize(
    "timestamp",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e308",
        "1.7e9",
        "-1",
        "+1700000000",
        " 1700000000",
        "1_700_000_000",
        "\u0661\u0667" + "\u0660" * 8,
        "1" * 400,
        "0",
        "",
    ],
)
async def test_a_timestamp_that_is_not_fresh_seconds_is_refused_even_if_signed(
    autojump_clock: trio.testing.MockClock, timestamp: str
) -> None:
    async with webhook_bridge() as (emu, hook, bridge):
        status, _ = await call(
            hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE), timestamp=timestamp)
        )
        stats = bridge.stats()
    assert status in (400, 403)
    assert stats.received == 0
    assert refused(bridge) == 1


async def test_oversized_bodies_and_other_methods_are_refused_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with webhook_bridge() as (emu, hook, bridge):
        query, _ = signed(emu, json.dumps(MESSAGE))
        huge = await call(hook.asgi, "POST", query, b" " * (_webhook.MAX_BODY + 1))
        put = await call(hook.asgi, "PUT", query, b"")
        many = await call(hook.asgi, "POST", b"&".join(b"a%d=1" % i for i in range(100)), b"")
    assert [huge[0], put[0], many[0]] == [413, 405, 400]
    assert refused(bridge) == 3


async def test_the_nonce_cache_stays_bounded_and_still_refuses_what_it_forgot(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its size, the cache forgets its oldest pairs but refuses anything as old, so a
    forgotten request cannot be replayed; requests newer than those still pass."""
    monkeypatch.setattr(_webhook, "MAX_NONCES", 10)
    now = NOW

    async with webhook_bridge(lambda: now) as (emu, hook, bridge):
        requests = []
        for n in range(30):
            now = NOW + n  # one request a second, each with its own timestamp
            request = signed(emu, json.dumps(dict(MESSAGE, msgid=f"m{n}")), timestamp=str(int(now)))
            requests.append(request)
            assert (await call(hook.asgi, "POST", *request))[0] == 200
            assert len(hook._nonces._seen) <= 10
        replays = [(await call(hook.asgi, "POST", *r))[0] for r in (requests[0], requests[-1])]
        await trio.sleep(5)
        assert bridge.stats().received == 30
    assert replays == [403, 403]


async def test_remembered_nonces_expire_with_the_freshness_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = NOW
    async with webhook_bridge(lambda: now) as (emu, hook, _):
        for n in range(50):
            now = NOW + 100 * n
            request = signed(emu, json.dumps(dict(MESSAGE, msgid=f"m{n}")), timestamp=str(int(now)))
            assert (await call(hook.asgi, "POST", *request))[0] == 200
        # pairs older than 300 s are forgotten: at one request per 100 s, a few remain
        assert len(hook._nonces._seen) <= 4


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@asynccontextmanager
async def nothing() -> AsyncIterator[None]:
    yield


# Bodies too big to show in a failing example's repr: the test sends BODIES[name].
BODIES = {
    "deep": deep(100_000),
    "deep encrypt": b'{"encrypt": ' + deep(100_000) + b"}",
    "huge": b" " * (_webhook.MAX_BODY + 1),
    "surrogate": b'{"encrypt": "\\ud800"}',
    "not utf-8": b'{"encrypt": "\xff\xfe"}',
    "number": b'{"encrypt": 1}',
    "not base64": b'{"encrypt": "' + b"A" * 50 + b'"}',
}
# Requests as anyone might send them: any method, query and body bytes; the right parameter
# names with junk values; bodies nested deeper than any decoder allows; invalid UTF-8.
junk = st.binary(max_size=300) | st.text(max_size=100).map(str.encode)
anyone = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "HEAD"]),
    junk
    | st.builds(
        lambda sig, ts, nonce, echo: urlencode(
            {"msg_signature": sig, "timestamp": ts, "nonce": nonce, "echostr": echo}
        ).encode(),
        st.text(max_size=40),
        st.text(max_size=20) | st.sampled_from(["nan", "inf", "1e308", str(int(NOW))]),
        st.text(max_size=10),
        st.text(max_size=40),
    ),
    junk | st.sampled_from(sorted(BODIES)),
)
json_values = json_trees()
# What only WeCom could send (signed with the token): any JSON, or the callbacks it does send
# with any value in any field, or text that is not JSON at all, or nested too deep.
plaintexts = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.sampled_from([MESSAGE, ENTER, {"msgtype": "stream", "stream": {"id": "x"}}]).flatmap(
        lambda base: st.dictionaries(st.sampled_from(sorted(base)), json_values).map(
            lambda changes: json.dumps({**base, **changes})
        )
    ),
    st.just("deep"),
)


@pytest.mark.fuzz
@given(st.lists(anyone | plaintexts, min_size=1, max_size=6))
def test_no_request_gets_a_500(requests: list[tuple[str, bytes, bytes | str] | str]) -> None:
    """Whatever comes in, unsigned or signed by WeCom, the answer is never a 5xx error
    except the 503 of a bridge not running (never the case here), and the webhook goes on
    answering good requests."""

    async def main() -> None:
        async with webhook_bridge() as (emu, hook, _):
            for request in requests:
                if isinstance(request, str):
                    plaintext = deep(100_000).decode() if request == "deep" else request
                    status, _ = await call(hook.asgi, "POST", *signed(emu, plaintext))
                else:
                    method, query, body = request
                    raw = BODIES[body] if isinstance(body, str) else body
                    status, _ = await call(hook.asgi, method, query, raw)
                assert status < 500
            good = await call(hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE)))
            assert good[0] == 200

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_callback_whose_put_failed_is_put_again_when_the_platform_retries() -> None:
    """The store refuses the first journal write: that request fails, and WeCom's retry of
    the same callback (same msgid) is journaled and answered, not taken for a duplicate."""

    journaled: list[str] = []

    class FailsOnce(cb.MemoryStore):
        failed = False

        async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
            if not self.failed:
                self.failed = True
                raise cb.StoreError("disk full (test)")
            new = await super().journal_add(messages)
            journaled.extend(m.id for m, is_new in zip(messages, new, strict=True) if is_new)
            return new

    emu = WeComEmulator()
    hook = wecom.Webhook(
        bot_id=emu.bot_id,
        token=emu.token,
        encoding_aes_key=emu.encoding_aes_key,
        wall_clock=lambda: NOW,
    )
    store = FailsOnce()
    with trio.fail_after(30):
        async with running_bridge(quick_bridge(hook, echo, store=store)):
            with pytest.raises(Exception, match="disk full"):
                await call(hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE)))
            status, _ = await call(hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE)))
            assert status == 200
            assert journaled == ["m1"]


async def test_events_are_counted_by_known_type_and_the_rest_as_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A counter's name never comes from the network: the event types WeCom documents are
    counted by name, any other (a typo, a new type, a hostile one) as ``events.other``,
    so the metrics' names stay few whatever arrives."""
    names = ["feedback_event", "template_card_event", "x" * 500, "new_type", "", "feedback_event"]
    async with webhook_bridge() as (emu, hook, bridge):
        for n, name in enumerate(names):
            event = {**ENTER, "msgid": f"e{n}", "event": {"eventtype": name}}
            assert (await call(hook.asgi, "POST", *signed(emu, json.dumps(event))))[0] == 200
        counted = {k: v for k, v in bridge.stats().other.items() if k.startswith("wecom.events.")}
    assert counted == {
        "wecom.events.feedback_event": 2,
        "wecom.events.template_card_event": 1,
        "wecom.events.other": 3,
    }
