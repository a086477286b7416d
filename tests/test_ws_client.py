"""Our WebSocket client (``trio_chatbridge._ws_client``): against trio-websocket's server, a
hand-made server speaking raw bytes (hostile cases, RFC 6455's own example frames), in-memory
streams where a read or a write must be split or stopped at an exact byte, and TLS."""

from __future__ import annotations

import inspect
import json
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
import trustme
from hypothesis import given
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

import trio_chatbridge as cb
from trio_chatbridge._ws_client import (
    REJECTION_BODY_LIMIT,
    SendFailed,
    WebSocketClient,
    _Address,
    open_websocket,
    upgrade,
)
from trio_chatbridge.connectors import (
    Answer,
    ConnectorContext,
    Disconnected,
    Outgoing,
    WebSocketDriver,
)
from trio_chatbridge.connectors import Event as DriverEvent
from trio_chatbridge.connectors import Request as DriverRequest
from trio_chatbridge.platforms import wecom
from trio_chatbridge.testing import WeComEmulator, running_bridge

Data = str | bytes
BOUND = 10.0  # seconds of real time any loopback test may take


# -- RFC 6455 section 5.7's example frames (server to client: unmasked) -------------------------

HELLO = bytes([0x81, 0x05]) + b"Hello"
HELLO_FRAGMENTED = bytes([0x01, 0x03]) + b"Hel" + bytes([0x80, 0x02]) + b"lo"
PING_HELLO = bytes([0x89, 0x05]) + b"Hello"
BINARY_256 = bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(range(256))
BINARY_64K = bytes([0x82, 0x7F]) + struct.pack("!Q", 65536) + b"\xab" * 65536


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One unmasked frame, as a server sends it (lengths up to 64 KiB)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + struct.pack("!H", len(payload)) + payload


# -- a server speaking raw bytes -----------------------------------------------------------------


class Peer:
    """The server's end of one connection: wsproto for what the client sends, raw bytes out."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.request: Request | None = None

    async def read_request(self) -> Request:
        while self.request is None:
            await self.feed()
        return self.request

    async def accept(self, *, then: bytes = b"") -> None:
        """Accept the upgrade, ``then`` written in the same write as the 101."""
        await self.read_request()
        await self.stream.send_all(self.ws.send(AcceptConnection()) + then)

    async def feed(self) -> list[Event]:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(bytes(data) if data else None)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, Request):
                self.request = event
        return events

    async def next_event(self, kind: type[Event]) -> Event:
        while True:
            for event in await self.feed():
                if isinstance(event, kind):
                    return event


Handler = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 running ``handler`` per connection; yields its ws:// URL."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await handler(Peer(stream))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/path?x=1"
        nursery.cancel_scope.cancel()


async def read_all(ws: WebSocketClient) -> tuple[list[Data], ConnectionClosed]:
    """Every message until the connection closes, and how it closed."""
    got: list[Data] = []
    while True:
        try:
            got.append(await ws.get_message())
        except ConnectionClosed as closed:
            return got, closed


# -- against trio-websocket's server -------------------------------------------------------------


async def echo_until_closed(request: WebSocketRequest, seen: list[object]) -> None:
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            if message == "close 4000":
                await ws.aclose(code=4000, reason="see you")
                return
            await ws.send_message(message)
    except ConnectionClosed as closed:
        seen.append(closed.reason.code if closed.reason else None)


@asynccontextmanager
async def echo_server(
    seen: list[object], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        handler = partial(echo_until_closed, seen=seen)
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, ssl_context)
        yield server.port
        nursery.cancel_scope.cancel()


async def test_messages_go_both_ways_and_the_close_handshake_says_1000() -> None:
    seen: list[object] = []
    with trio.fail_after(BOUND):
        async with echo_server(seen) as port:
            url = f"ws://127.0.0.1:{port}/?token=secret"
            async with open_websocket(url, max_message_size=2**21) as ws:
                assert "secret" not in repr(ws)
                big = bytes(range(256)) * 4096  # 1 MiB: many reads, one message
                sent: list[Data] = ["hello", b"\x00\xff", "", "\u4f60\u597d" * 1000, big]
                for message in sent:
                    await ws.send_message(message)
                    assert await ws.get_message() == message
            assert ws.closed is not None and ws.closed.code == 1000
            with pytest.raises(ConnectionClosed):
                await ws.send_message("after the end")
        assert seen == [1000]


async def test_the_servers_close_is_connection_closed_with_its_code_and_reason() -> None:
    with trio.fail_after(BOUND):
        async with echo_server([]) as port, open_websocket(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message("one")
            await ws.send_message("close 4000")
            got, closed = await read_all(ws)
            with pytest.raises(ConnectionClosed) as again:
                await ws.send_message("too late")
    assert got == ["one"]
    assert closed.reason is not None and (closed.reason.code, closed.reason.reason) == (
        4000,
        "see you",
    )
    assert again.value.reason is closed.reason


# -- RFC 6455's frames and hostile servers -------------------------------------------------------


async def test_rfc_6455_frames_become_their_messages_and_a_ping_its_pong() -> None:
    pongs: list[bytes] = []
    path: list[tuple[str, str]] = []

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        path.append((request.host, request.target))
        # frames in the same write as the 101; a ping between two fragments of a message
        interleaved = frame(0x1, b"Hel", fin=False) + PING_HELLO + frame(0x0, b"lo")
        await peer.accept(then=HELLO + HELLO_FRAGMENTED + interleaved + BINARY_256 + BINARY_64K)
        pong = await peer.next_event(Pong)
        assert isinstance(pong, Pong)
        pongs.append(bytes(pong.payload))
        await peer.stream.send_all(frame(0x8, struct.pack("!H", 1001) + b"going"))
        await peer.next_event(CloseConnection)

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url, open_websocket(url) as ws:
            got, closed = await read_all(ws)
    port = url.split(":")[2].split("/")[0]
    assert path == [(f"127.0.0.1:{port}", "/path?x=1")]
    assert got == ["Hello", "Hello", "Hello", bytes(range(256)), b"\xab" * 65536]
    assert pongs == [b"Hello"]
    assert closed.reason is not None and (closed.reason.code, closed.reason.reason) == (
        1001,
        "going",
    )


async def answered_with(*answer: bytes) -> HandshakeError:
    """What opening raises when the server answers the upgrade with ``answer`` (its writes)
    and then waits: a client that waited for more would hang."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        for data in answer:
            await peer.stream.send_all(data)
        await trio.sleep_forever()

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url:
            with pytest.raises(HandshakeError) as failed:
                async with open_websocket(url):
                    pass
    return failed.value


async def test_a_refused_upgrade_carries_status_headers_and_body() -> None:
    rejected = await answered_with(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nX-Why: banned\r\n\r\ndenied!"
    )
    assert isinstance(rejected, ConnectionRejected)
    assert rejected.status_code == 403
    assert (b"x-why", b"banned") in rejected.headers
    assert rejected.body == b"denied!"


async def test_a_refusals_body_is_read_up_to_a_bound_only() -> None:
    rejected = await answered_with(
        b"HTTP/1.1 500 Oops\r\nContent-Length: 100000000\r\n\r\n",
        b"x" * (REJECTION_BODY_LIMIT + 4096),  # the other 99.9 MB never come
    )
    assert isinstance(rejected, ConnectionRejected)
    assert rejected.status_code == 500
    assert rejected.body == b"x" * REJECTION_BODY_LIMIT


async def test_a_message_over_the_limit_closes_with_1009_after_the_good_ones() -> None:
    closes: list[int] = []

    async def handler(peer: Peer) -> None:
        # 10 bytes allowed: a good one, then 6 + 5 bytes in two fragments
        oversize = frame(0x2, b"123456", fin=False) + frame(0x0, b"78901")
        await peer.accept(then=frame(0x1, b"fine") + oversize + frame(0x1, b"never"))
        close = await peer.next_event(CloseConnection)
        assert isinstance(close, CloseConnection)
        closes.append(close.code)
        await peer.stream.send_all(peer.ws.send(close.response()))

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url, open_websocket(url, max_message_size=10) as ws:
            got, closed = await read_all(ws)
    assert got == ["fine"]
    assert closed.reason is not None and closed.reason.code == 1009
    assert "max_message_size" in str(closed.reason.reason)
    assert closes == [1009]


@pytest.mark.parametrize("piece", [b"", b"x"])
async def test_a_flood_of_tiny_fragments_closes_with_1009_within_the_limit(
    piece: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    """500 empty (or 1-byte) fragments of a message that never ends: 500 bytes of data at
    most, under the limit, but keeping each fragment costs memory: they count against it."""
    ws, peer = await upgraded(*trio.testing.memory_stream_pair(), max_message_size=1000)
    flood = frame(0x1, piece, fin=False) + frame(0x0, piece, fin=False) * 499
    with trio.fail_after(BOUND):  # on the test's clock: a reader left waiting fails at once
        await peer.stream.send_all(HELLO + flood)
        got, closed = await read_all(ws)
        close = await peer.next_event(CloseConnection)
    assert got == ["Hello"]
    assert closed.reason is not None and closed.reason.code == 1009
    assert isinstance(close, CloseConnection) and close.code == 1009


async def test_the_socket_ending_mid_frame_is_an_abnormal_close() -> None:
    async def handler(peer: Peer) -> None:
        await peer.accept(then=HELLO + bytes([0x81, 0x0A]) + b"abc")  # 3 of 10 bytes

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url, open_websocket(url) as ws:
            got, closed = await read_all(ws)
    assert got == ["Hello"]
    assert closed.reason is not None and closed.reason.code == 1006
    assert "mid-message" in str(closed.reason.reason)


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (bytes([0xF3, 0x00]), 1002),  # reserved bits and a reserved opcode
        (frame(0x0, b"orphan"), 1002),  # a continuation with nothing to continue
        (frame(0x1, b"\xff\xfe"), 1007),  # text that is not UTF-8
    ],
)
async def test_garbage_closes_with_wsprotos_code_after_the_good_messages(
    garbage: bytes, code: int
) -> None:
    """And closing waits for no answer (RFC 6455 section 7.1.7: a failed connection reads no
    more): the server, silent and keeping the socket open, would hold it for the whole
    disconnect timeout (60 s, over BOUND)."""
    closes: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.accept(then=HELLO + garbage)
        close = await peer.next_event(CloseConnection)
        assert isinstance(close, CloseConnection)
        closes.append(close.code)
        await trio.sleep_forever()

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url, open_websocket(url) as ws:
            got, closed = await read_all(ws)
    assert got == ["Hello"]
    assert closed.reason is not None and closed.reason.code == code
    assert closes == [code]


async def test_garbage_instead_of_the_answer_to_our_close_ends_the_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, peer = await upgraded(*trio.testing.memory_stream_pair())

    async def server() -> None:
        await peer.next_event(CloseConnection)
        await peer.stream.send_all(bytes([0xF3, 0x00]))  # and then silence, the socket open

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        started = trio.current_time()
        await ws.aclose()
    assert trio.current_time() - started < 1  # not the disconnect timeout (60 s)
    assert ws.closed is not None and ws.closed.code == 1000


@pytest.mark.parametrize("ended_by", ["an error", "a cancellation"])
async def test_an_error_closes_without_waiting_for_an_answer_a_cancellation_waits(
    ended_by: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A block ended by an error (a refusal for good, a peer gone silent) waited for the
    peer's answer to our close up to the disconnect timeout: a WeCom or Lark connector
    refused for good showed "failed" 5 s late against a server that never answered. Our
    close still goes out; only a cancellation (a shutdown) waits for the answer."""
    closes: list[Event] = []

    async def never_answers(peer: Peer) -> None:
        await peer.accept()
        closes.append(await peer.next_event(CloseConnection))
        await trio.sleep_forever()  # the socket open, the close unanswered

    async with raw_server(never_answers) as url:
        with trio.CancelScope() as scope:
            try:
                async with open_websocket(url, disconnect_timeout=5):
                    started = trio.current_time()
                    if ended_by == "a cancellation":
                        scope.cancel()
                        await trio.lowlevel.checkpoint()
                    raise ValueError("refused for good")
            except ValueError:
                pass
        waited = trio.current_time() - started
    assert len(closes) == 1  # our close went out either way
    assert waited < 1 if ended_by == "an error" else waited >= 5


async def test_an_answer_that_is_not_http_is_a_handshake_error() -> None:
    failed = await answered_with(b"\x00\x01garbage\r\n\r\n")
    assert not isinstance(failed, ConnectionRejected)
    assert "/path" in str(failed) and "x=1" not in str(failed)


async def test_a_refused_connection_is_a_handshake_error_caused_by_the_os() -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(BOUND), pytest.raises(HandshakeError) as failed:
        async with open_websocket(f"ws://127.0.0.1:{port}/?key=secret"):
            pass
    assert isinstance(failed.value.__cause__, OSError)
    assert "secret" not in str(failed.value)


async def test_a_server_that_never_answers_is_a_connection_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(peer: Peer) -> None:
        await trio.sleep_forever()

    async with raw_server(handler) as url:
        started = trio.current_time()
        with pytest.raises(ConnectionTimeout) as timeout:
            async with open_websocket(url.replace("//", "//alice:hunter2@"), connect_timeout=15):
                pass
    assert trio.current_time() - started == pytest.approx(15)
    assert "/path" in str(timeout.value) and "hunter2" not in str(timeout.value)


async def test_no_repr_and_no_error_shows_the_urls_credentials() -> None:
    """A user part (``alice:hunter2@``) and a query (``?token=s3cret``) both may carry
    credentials: the open client's repr, the parsed URL's and every failure's text show the
    scheme, host, port and path only."""

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if request.target.startswith("/garbage"):
            await peer.stream.send_all(b"\x00\x01garbage\r\n\r\n")
        elif request.target.startswith("/hangup"):
            return
        else:
            await peer.accept()
        await peer.next_event(CloseConnection)

    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        refused = f"ws://127.0.0.1:{probe.getsockname()[1]}"
    shown: list[str] = []
    with trio.fail_after(BOUND):
        async with raw_server(handler) as url:
            server = url.split("/path")[0]
            for base, path in [
                (server, "/open"),
                (server, "/garbage"),  # not an HTTP answer
                (server, "/hangup"),  # the socket ends during the handshake
                (refused, "/"),
            ]:
                secret = base.replace("ws://", "ws://alice:hunter2@") + path + "?token=s3cret"
                shown.append(repr(_Address.parse(secret)))
                try:
                    async with open_websocket(secret) as ws:
                        shown.append(repr(ws))
                except HandshakeError as failed:
                    shown += [str(failed), repr(failed)]
    assert len(shown) == 4 + 1 + 3 * 2  # each URL parsed, one open client, three failures
    assert all("127.0.0.1" in text for text in shown)
    assert not [text for text in shown if any(s in text for s in ("alice", "hunter2", "s3cret"))]


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "ws:///nohost", "wss//x"])
async def test_a_url_that_is_not_a_websockets_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="WebSocket URL"):
        async with open_websocket(url):
            pass


# -- exact reads and writes over in-memory streams ----------------------------------------------


async def upgraded(
    client_stream: trio.abc.Stream, server_stream: trio.abc.Stream, **options: int
) -> tuple[WebSocketClient, Peer]:
    """A client upgraded over ``client_stream``, the server's side answering on the other."""
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        ws = await upgrade(client_stream, "ws://example.test/", **options)
    return ws, peer


async def test_a_cancelled_get_message_keeps_what_it_had_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, peer = await upgraded(*trio.testing.memory_stream_pair())
    await peer.stream.send_all(HELLO[:4])  # half a frame
    with trio.fail_after(BOUND), trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.get_message)
            await trio.testing.wait_all_tasks_blocked()  # the half frame was read
            scope.cancel()
    assert scope.cancelled_caught
    await peer.stream.send_all(HELLO[4:] + HELLO)
    assert [await ws.get_message(), await ws.get_message()] == ["Hello", "Hello"]


async def test_a_second_reader_at_once_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    ws, peer = await upgraded(*trio.testing.memory_stream_pair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.get_message)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await ws.get_message()
        await peer.stream.send_all(HELLO)
    assert await _next_or_none(ws, peer) is None  # the first reader took it, nothing is left


async def _next_or_none(ws: WebSocketClient, peer: Peer) -> Data | None:
    with trio.move_on_after(1):
        return await ws.get_message()
    return None


async def test_a_send_cancelled_mid_write_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_out, server_in = trio.testing.lockstep_stream_one_way_pair()  # a write waits for reads
    server_out, client_in = trio.testing.memory_stream_one_way_pair()
    client = trio.StapledStream(client_out, client_in)
    server = trio.StapledStream(server_out, server_in)
    peer = Peer(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        ws = await upgrade(client, "ws://example.test/")
    reader_saw: list[ConnectionClosed] = []

    async def reader() -> None:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        reader_saw.append(closed.value)

    with trio.fail_after(BOUND):  # on the test's clock: a reader left waiting fails at once
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            with trio.CancelScope() as scope:
                nursery.start_soon(partial(server.receive_some, 10))  # 10 bytes of the frame
                async with trio.open_nursery() as sending:
                    sending.start_soon(ws.send_message, b"x" * 1000)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
    assert scope.cancelled_caught
    assert ws.closed is not None and ws.closed.code == 1006
    assert "interrupted" in str(ws.closed.reason)
    with pytest.raises(ConnectionClosed):
        await ws.send_message("next")  # nothing more is written on a stream mid-frame
    assert [closed.reason for closed in reader_saw] == [ws.closed]  # the reader was woken


def _frames_of(messages: list[tuple[Data, int]], pings: list[bool]) -> bytes:
    """The server's bytes for ``messages``, each in the given number of fragments, a ping
    before each where ``pings`` says so."""
    server = Connection(ConnectionType.SERVER)  # open already: no handshake bytes
    out = bytearray()
    for (message, pieces), ping in zip(messages, pings, strict=True):
        if ping:
            out += server.send(Ping(payload=b"p"))
        cut = max(1, len(message) // pieces) if message else 1
        chunks = [message[i : i + cut] for i in range(0, len(message), cut)] or [message]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            event: TextMessage | BytesMessage = (
                TextMessage(chunk, message_finished=last)
                if isinstance(chunk, str)
                else BytesMessage(chunk, message_finished=last)
            )
            out += server.send(event)
    return bytes(out)


messages_strategy = st.lists(
    st.tuples(
        st.one_of(st.text(max_size=300), st.binary(max_size=300)),
        st.integers(min_value=1, max_value=4),
    ),
    min_size=1,
    max_size=8,
)


@given(messages=messages_strategy, data=st.data())
def test_any_split_of_the_stream_into_reads_gives_the_same_messages(
    messages: list[tuple[Data, int]], data: st.DataObject
) -> None:
    pings = data.draw(st.lists(st.booleans(), min_size=len(messages), max_size=len(messages)))
    wire = _frames_of(messages, pings)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=40)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]

    async def main() -> list[Data]:
        # 300 bytes a message, in up to 47 pieces (7 fragments, 40 reads) of FRAGMENT_COST each
        ws, peer = await upgraded(*trio.testing.memory_stream_pair(), max_message_size=10_000)
        got: list[Data] = []

        async def read() -> None:
            while len(got) < len(messages):
                got.append(await ws.get_message())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for chunk in chunks:  # each chunk one read of the client's
                await trio.testing.wait_all_tasks_blocked()
                await peer.stream.send_all(chunk)
        return got

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == [message for message, _ in messages]


# -- TLS -----------------------------------------------------------------------------------------


async def test_wss_with_a_trusted_ca_and_a_refused_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with trio.fail_after(BOUND):
        async with echo_server([], server_context) as port:
            url = f"wss://127.0.0.1:{port}/"
            async with open_websocket(url, ssl_context=trusting) as ws:
                await ws.send_message("over TLS")
                assert await ws.get_message() == "over TLS"
            with pytest.raises(HandshakeError) as refused:
                async with open_websocket(url, ssl_context=ssl.create_default_context()):
                    pass
    assert isinstance(refused.value.__cause__, ssl.SSLError)
    with pytest.raises(ValueError, match="wss"):
        async with open_websocket("ws://127.0.0.1:1/", ssl_context=trusting):
            pass


# -- the platforms' default opener ---------------------------------------------------------------


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


async def test_wecoms_default_opener_is_this_client_and_talks_to_the_emulator() -> None:
    default = inspect.signature(wecom.LongConnection).parameters["open_websocket"].default
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(WeComEmulator().serve)
            async with default(emulator.ws_url) as ws:
                assert isinstance(ws, WebSocketClient)
            assert await _bridged_echo(emulator) == sorted(f"message {n}" for n in range(20))
            nursery.cancel_scope.cancel()


async def test_trio_websockets_opener_still_plugs_in() -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(WeComEmulator().serve)
            sent = await _bridged_echo(emulator, open_websocket=open_websocket_url)
            nursery.cancel_scope.cancel()
    assert sent == sorted(f"message {n}" for n in range(20))


async def _bridged_echo(emulator: WeComEmulator, **options: Any) -> list[str]:
    """20 users' messages through a bridge on the emulator (loopback), the replies' texts."""
    connector = emulator.connector(**options)
    bridge = cb.Bridge([connector], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=0))
    async with running_bridge(bridge):
        for n in range(20):
            emulator.user_says(f"user{n}", f"message {n}")
        return sorted([(await emulator.next_sent()).text for _ in range(20)])


async def test_a_refusal_read_with_the_close_is_the_error_alone() -> None:
    """WeCom refuses a subscribe and closes: both arrive in one read, so the reader meets the
    close before the subscribe's task has seen its answer. The refusal is why (fatal), not a
    group of it and a closed socket (which the default opener, with no step between the two,
    made every time)."""

    async def handler(peer: Peer) -> None:
        await peer.accept()
        subscribe = await peer.next_event(TextMessage)
        assert isinstance(subscribe, TextMessage)
        req_id = json.loads(subscribe.data)["headers"]["req_id"]
        refusal = {"headers": {"req_id": req_id}, "errcode": 40001, "errmsg": "invalid secret"}
        closing = struct.pack("!H", 1000)
        await peer.stream.send_all(frame(0x1, json.dumps(refusal).encode()) + frame(0x8, closing))
        await peer.next_event(CloseConnection)

    async def put(messages: Sequence[cb.Message]) -> list[cb.Message]:
        raise AssertionError("nothing is delivered")

    with trio.fail_after(BOUND):
        async with raw_server(handler) as url:
            connector = wecom.LongConnection(bot_id="bot", secret="wrong", url=url)
            connector.bind(
                ConnectorContext("wecom", "bot", cb.MemoryStore(), put, _ignore, _ignore)
            )
            with pytest.raises(cb.FatalConnectorError, match="subscribe refused"):
                await connector.run()
            await connector.aclose()


def _ignore(*args: object) -> None:
    """Counters and states are not looked at here."""


# -- write-combining: senders that find a write in progress --------------------------------------


class GatedSocket(trio.abc.Stream):
    """A client's socket in memory: each ``send_all`` is kept whole in ``writes`` as it starts
    (a socket has the bytes once handed over), then, while ``holding``, waits for
    :meth:`release` (which may make it fail), as a write to a full socket waits; a write
    cancelled there is cut mid-frame for the client. Reads come from ``incoming``."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.holding = False
        self.incoming = trio.testing.MemoryReceiveStream()
        self._released = trio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self.held = False
        """Whether a write waits for :meth:`release`."""

    def release(self, error: BaseException | None = None) -> None:
        """Ends the write held (with ``error`` raised in it, if given); once only."""
        if not self._released.is_set():
            self._error = error
            self._released.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))
        if self.holding:
            self._released = released = trio.Event()
            self.held = True
            try:
                await released.wait()
            finally:
                self.held = False
            if self._error is not None:
                raise self._error

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.incoming.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._closed = True
        self.release(trio.ClosedResourceError("another task closed this socket"))
        self.incoming.close()
        await trio.lowlevel.checkpoint()


async def gated(**options: float) -> tuple[WebSocketClient, GatedSocket, WSConnection]:
    """A client open over a :class:`GatedSocket`, and the server's protocol state to decode
    what it wrote (``writes`` then holds frames only)."""
    socket = GatedSocket()
    server = WSConnection(ConnectionType.SERVER)

    async def accept() -> None:
        await trio.testing.wait_all_tasks_blocked()
        server.receive_data(socket.writes.pop())
        assert any(isinstance(event, Request) for event in server.events())
        socket.incoming.put_data(server.send(AcceptConnection()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        ws = await upgrade(socket, "ws://example.test/", **options)  # type: ignore[arg-type]
    return ws, socket, server


def on_the_wire(socket: GatedSocket, server: WSConnection) -> list[object]:
    """What the client wrote, as the server reads it: texts, ``("pong", payload)``,
    ``("close", code)``."""
    server.receive_data(b"".join(socket.writes))
    socket.writes.clear()
    seen: list[object] = []
    for event in server.events():
        if isinstance(event, TextMessage):
            seen.append(event.data)
        elif isinstance(event, Pong):
            seen.append(("pong", bytes(event.payload)))
        elif isinstance(event, CloseConnection):
            seen.append(("close", event.code))
    return seen


@asynccontextmanager
async def in_line(
    **options: float,
) -> AsyncIterator[tuple[WebSocketClient, GatedSocket, WSConnection, Senders]]:
    """A client over a :class:`GatedSocket` that holds every write, and its senders; on the
    way out, every write is let go and every sender ended (within :data:`BOUND`)."""
    ws, socket, server = await gated(**options)
    socket.holding = True
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            yield ws, socket, server, Senders(ws, nursery)
            socket.holding = False
            socket.release()


class Senders:
    """Tasks sending one text each, started one at a time (each in line, or writing, before
    the next starts), each in its own cancel scope; what each ``send_message`` did."""

    def __init__(self, ws: WebSocketClient, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.nursery = nursery
        self.scopes: list[trio.CancelScope] = []
        self.outcomes: dict[int, str] = {}
        self.after: dict[int, Callable[[], None]] = {}
        """What a sender does right after its send returns (no checkpoint between)."""
        self.may_have_been_sent: dict[int, bool] = {}
        """What the ``SendFailed`` of each sender that got one said."""

    async def start(self, count: int = 1) -> None:
        for _ in range(count):
            self.scopes.append(trio.CancelScope())
            self.nursery.start_soon(self._send, len(self.scopes) - 1)
            await trio.testing.wait_all_tasks_blocked()

    async def _send(self, n: int) -> None:
        with self.scopes[n]:
            try:
                await self.ws.send_message(f"m{n}")
            except SendFailed as exc:
                self.outcomes[n] = "closed"
                self.may_have_been_sent[n] = exc.may_have_been_sent
                return
            self.outcomes[n] = "returned"
            self.after.get(n, lambda: None)()
            return
        self.outcomes[n] = "cancelled"

    def cancel(self, n: int) -> None:
        self.scopes[n].cancel()

    def cancel_if_started(self, n: int) -> None:
        if n < len(self.scopes):
            self.scopes[n].cancel()


async def test_senders_that_find_a_write_in_progress_share_one_send_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_line() as (_, socket, server, senders):
        await senders.start(10)  # m0 writes (held); m1..m9 wait in line
        assert len(socket.writes) == 1 and senders.outcomes == {}
        socket.release()
        await trio.testing.wait_all_tasks_blocked()
        assert senders.outcomes == {0: "returned"}
        assert len(socket.writes) == 2 and socket.held  # m1 writes m1..m9 at once
    assert senders.outcomes == {n: "returned" for n in range(10)}
    assert len(socket.writes) == 2
    assert on_the_wire(socket, server) == [f"m{n}" for n in range(10)]


async def test_a_sender_cancelled_in_line_writes_nothing_and_raises_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_line() as (ws, socket, server, senders):
        await senders.start(4)
        senders.cancel(2)
        await trio.testing.wait_all_tasks_blocked()
        assert senders.outcomes == {2: "cancelled"}
    assert senders.outcomes == {0: "returned", 1: "returned", 2: "cancelled", 3: "returned"}
    assert len(socket.writes) == 2  # m0; m1 and m3
    assert on_the_wire(socket, server) == ["m0", "m1", "m3"]
    assert ws.closed is None  # nothing was cut: the connection goes on
    await ws.send_message("after")
    assert on_the_wire(socket, server) == ["after"]


async def test_a_sender_cancelled_once_its_frame_is_taken_waits_for_that_write_and_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trio's rule for what cannot be undone: its frame is in a write, so the send is not
    cancelled; it returns when the write completed (the frame was sent), not before."""
    async with in_line() as (_, socket, server, senders):
        await senders.start(3)
        socket.release()  # m0 written; m1 writes m1 and m2 (held)
        await trio.testing.wait_all_tasks_blocked()
        assert socket.held
        senders.cancel(2)
        await trio.testing.wait_all_tasks_blocked()
        assert senders.outcomes == {0: "returned"}  # m2 still waits for the write
    assert senders.outcomes == {0: "returned", 1: "returned", 2: "returned"}
    assert on_the_wire(socket, server) == ["m0", "m1", "m2"]


async def test_the_next_writer_cancelled_before_it_ran_passes_its_turn_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_line() as (ws, socket, server, senders):
        senders.after[0] = partial(senders.cancel, 1)  # m1 was told to write, not yet run
        await senders.start(3)
    assert senders.outcomes == {0: "returned", 1: "cancelled", 2: "returned"}
    assert on_the_wire(socket, server) == ["m0", "m2"]
    assert ws.closed is None


async def test_a_sender_cancelled_once_taken_gives_a_stuck_write_the_disconnect_timeout_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The peer stopped reading, so the write that took the frame never ends: the cancelled
    sender waits the disconnect timeout, then the connection is lost (1006) and the socket
    closed, so a shutdown is not held past its grace."""
    async with in_line(disconnect_timeout=5) as (ws, socket, server, senders):
        await senders.start(3)
        socket.release()  # m0 written; m1 writes m1 and m2, held for good
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        senders.cancel(2)
        await trio.sleep(4.9)
        assert senders.outcomes == {0: "returned"}  # m2 still waits for the write
        await trio.sleep(0.2)
        assert trio.current_time() - started < 5.2
        assert senders.outcomes == {0: "returned", 1: "closed", 2: "closed"}
    assert senders.may_have_been_sent == {1: True, 2: True}
    assert ws.closed is not None and ws.closed.code == 1006
    assert on_the_wire(socket, server) == ["m0", "m1", "m2"]


async def test_a_close_in_a_stuck_write_at_the_disconnect_timeout_is_given_no_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def release_m0() -> None:  # once our close is in line
        await trio.testing.wait_all_tasks_blocked()
        socket.release()  # m0 written; m1 writes m1 and our close, held for good

    async with in_line(disconnect_timeout=5) as (ws, socket, server, senders):
        await senders.start(2)  # m0 held, m1 in line
        senders.nursery.start_soon(release_m0)
        started = trio.current_time()
        await ws.aclose()
        assert trio.current_time() - started == pytest.approx(5)
    assert ws.closed is not None and ws.closed.code == 1006
    assert senders.outcomes == {0: "returned", 1: "closed"}
    assert on_the_wire(socket, server) == ["m0", "m1", ("close", 1000)]


@pytest.mark.parametrize("how", ["the socket breaks", "the writer is cancelled"])
async def test_a_failed_write_fails_every_frame_it_carried_and_every_frame_in_line(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with in_line() as (ws, socket, server, senders):
        await senders.start(4)
        socket.release()  # m0 written; m1 writes m1..m3 (held)
        await trio.testing.wait_all_tasks_blocked()
        await senders.start()  # m4 in line
        if how == "the socket breaks":
            socket.release(trio.BrokenResourceError("connection reset"))
        else:
            senders.cancel(1)
    writer = "closed" if how == "the socket breaks" else "cancelled"
    assert senders.outcomes == {0: "returned", 1: writer, 2: "closed", 3: "closed", 4: "closed"}
    assert ws.closed is not None and ws.closed.code == 1006
    assert on_the_wire(socket, server) == ["m0", "m1", "m2", "m3"]  # m1's write, then nothing
    # m1..m3 were in the failed write: any of them may have reached the peer; m4 never left
    in_the_write = {1: True} if how == "the socket breaks" else {}
    assert senders.may_have_been_sent == in_the_write | {2: True, 3: True, 4: False}
    with pytest.raises(SendFailed) as raised:
        await ws.send_message("after")
    assert not raised.value.may_have_been_sent
    assert socket.writes == []


async def test_a_frame_alone_in_a_failed_write_may_have_been_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A failed ``send_all`` does not say how much of it went: all of it, maybe (a stream
    that fails after handing every byte over), so even a lone frame may have been sent."""
    async with in_line() as (_, socket, server, senders):
        await senders.start()  # m0 writes alone (held)
        socket.release(trio.BrokenResourceError("connection reset"))
    assert senders.outcomes == {0: "closed"} and senders.may_have_been_sent == {0: True}
    assert on_the_wire(socket, server) == ["m0"]


async def test_a_frame_built_after_the_connection_closed_was_not_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, socket, server = await gated()
    socket.incoming.put_data(server.send(CloseConnection(code=1001, reason="going away")))
    with pytest.raises(ConnectionClosed):
        await ws.get_message()
    with pytest.raises(SendFailed) as raised:
        await ws.send_message("late")
    assert not raised.value.may_have_been_sent
    assert raised.value.reason is not None and raised.value.reason.code == 1001
    assert on_the_wire(socket, server) == [("close", 1001)]  # our reply, not the frame


async def test_a_close_while_senders_wait_goes_out_after_their_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_line() as (ws, socket, server, senders):
        await senders.start(3)
        senders.nursery.start_soon(ws.aclose)
        await trio.testing.wait_all_tasks_blocked()
        await senders.start()  # after the close was built: refused at once
        assert senders.outcomes == {3: "closed"}
        socket.holding = False
        socket.release()
        await trio.testing.wait_all_tasks_blocked()
        wire = on_the_wire(socket, server)
        socket.incoming.put_data(server.send(CloseConnection(code=1000)))  # the answer
    assert wire == ["m0", "m1", "m2", ("close", 1000)]
    assert senders.outcomes == {0: "returned", 1: "returned", 2: "returned", 3: "closed"}
    assert ws.closed is not None and ws.closed.code == 1000


async def test_a_close_still_in_line_at_the_disconnect_timeout_loses_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Our close was built (wsproto counts it as sent) but never written: lost, not closed."""
    async with in_line(disconnect_timeout=5) as (ws, socket, server, senders):
        await senders.start(2)  # m0 held for good, m1 in line
        started = trio.current_time()
        await ws.aclose()
        assert trio.current_time() - started == pytest.approx(5)
    assert ws.closed is not None and ws.closed.code == 1006
    assert "close" in str(ws.closed.reason)
    assert senders.outcomes == {0: "closed", 1: "closed"}  # the socket was closed under m0
    assert senders.may_have_been_sent == {0: True, 1: False}  # m0 was cut, m1 never written
    assert on_the_wire(socket, server) == ["m0"]


@pytest.mark.parametrize("another_in_line", [False, True])
async def test_a_pong_owed_before_a_withdrawn_frame_is_still_written(
    another_in_line: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """The reader returned a message read with a ping, so the pong was owed when m1 was
    built: it went out in front of m1, and stays in its place when m1 is withdrawn."""
    async with in_line() as (ws, socket, server, senders):
        await senders.start()  # m0 held
        socket.incoming.put_data(PING_HELLO + HELLO)
        assert await ws.get_message() == "Hello"  # the pong owed, not yet written
        await senders.start(2 if another_in_line else 1)
        senders.cancel(1)
        socket.holding = False
        socket.release()
        await trio.testing.wait_all_tasks_blocked()
        if not another_in_line:  # owed again: the reader writes it before it reads
            with trio.move_on_after(1):
                await ws.get_message()
    expected: list[object] = ["m0", ("pong", b"Hello")]
    if another_in_line:
        expected.append("m2")
    assert on_the_wire(socket, server) == expected
    assert senders.outcomes[1] == "cancelled"


async def test_a_pong_owed_while_frames_wait_goes_out_after_them_in_the_next_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_line() as (ws, socket, server, senders):
        await senders.start(2)  # m0 held, m1 in line
        socket.incoming.put_data(PING_HELLO + HELLO)
        assert await ws.get_message() == "Hello"  # the pong owed, built after m1
    assert on_the_wire(socket, server) == ["m0", "m1", ("pong", b"Hello")]
    assert senders.outcomes == {0: "returned", 1: "returned"}


Step = tuple[str, int]


@given(
    steps=st.lists(
        st.one_of(
            st.just(("send", 0)),
            st.just(("release", 0)),
            st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=7)),
        ),
        max_size=30,
    ),
    after=st.dictionaries(st.integers(0, 7), st.integers(0, 7)),
)
def test_senders_cancelled_at_random_leave_exactly_their_frames_on_the_wire_in_order(
    steps: list[Step], after: dict[int, int]
) -> None:
    """Whatever the cancellations: the wire holds the frames of the sends that returned, in
    the order of the calls, plus frames cut with the connection (a writer cancelled mid-write:
    the client says 1006, and only the writer's and those it carried, which raised); a send
    cancelled in line wrote nothing. ``after``: a sender cancels another as soon as its send
    returns, before any other task runs (a writer done cancels the next writer told to go)."""

    async def main() -> tuple[Senders, list[object]]:
        async with in_line() as (ws, socket, server, senders):
            for n, other in after.items():
                senders.after[n] = partial(senders.cancel_if_started, other)
            for action, n in steps:
                if action == "send" and len(senders.scopes) < 8:
                    await senders.start()
                elif action == "release" and socket.held:
                    socket.release()
                elif action == "cancel" and n < len(senders.scopes):
                    senders.cancel(n)
                await trio.testing.wait_all_tasks_blocked()
        closed = ws.closed
        assert closed is None or (closed.code == 1006 and "interrupted" in str(closed.reason))
        return senders, on_the_wire(socket, server)

    senders, wire = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    sent = [int(str(text)[1:]) for text in wire]
    assert sent == sorted(sent) and len(set(sent)) == len(sent)  # in the order of the calls
    returned = {n for n, what in senders.outcomes.items() if what == "returned"}
    assert returned <= set(sent)
    raised_on_the_wire = [senders.outcomes[n] for n in sent if n not in returned]
    # frames on the wire whose sends raised: those of the cut write, the writer cancelled
    assert raised_on_the_wire.count("cancelled") <= 1
    if raised_on_the_wire:
        assert "cancelled" in raised_on_the_wire
    assert len(senders.outcomes) == len(senders.scopes)  # every send ended


# -- the driver over this client: a frame in a broken combined write is not sent again -----------


class AnsweringCore:
    """A toy protocol for the driver: no handshake, no heartbeat; ``ans:<key>`` answers."""

    heartbeat_interval = 1000.0
    silence = 10000.0

    def open(self) -> Sequence[Outgoing]:
        return []

    def heartbeat(self) -> Outgoing | None:
        return None

    def receive(self, data: Data, now: float) -> Sequence[DriverEvent[str]]:
        assert isinstance(data, str) and data.startswith("ans:")
        return [Answer(data[4:])]

    def rejected(self, status: int | None, headers: Mapping[str, str], body: bytes) -> Exception:
        return cb.FatalConnectorError("refused")


async def test_a_request_in_a_broken_combined_write_is_disconnected_sent_not_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A proactive request (``again=False``) written with a frame before it, in one write that
    fails: it may have reached the server whole, so the driver must not send it again on the
    next connection (a duplicate message); it raises ``Disconnected(sent=True)``."""
    sockets: list[tuple[GatedSocket, WSConnection]] = []

    @asynccontextmanager
    async def open_gated(url: str) -> AsyncIterator[WebSocketClient]:
        ws, socket, server = await gated()
        socket.holding = True
        sockets.append((socket, server))
        yield ws

    def refused(answer: Answer) -> Exception:
        return cb.PlatformError(f"refused {answer.code}")

    async def ask(key: str, errors: dict[str, Disconnected]) -> None:
        try:
            await driver.request(DriverRequest(key, f"do:{key}", refused))
        except Disconnected as exc:
            errors[key] = exc

    driver: WebSocketDriver[str] = WebSocketDriver(
        AnsweringCore(), name="toy acct", open_websocket=open_gated
    )
    context = ConnectorContext("toy", "acct", cb.MemoryStore(), _put_nothing, _ignore, _ignore)
    errors: dict[str, Disconnected] = {}
    with trio.fail_after(BOUND), pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, context, "ws://example.test/")
            socket, server = sockets[0]
            nursery.start_soon(driver.send, "first")  # written alone, held
            await trio.testing.wait_all_tasks_blocked()
            for key in ("a", "b"):  # in line behind it
                nursery.start_soon(ask, key, errors)
                await trio.testing.wait_all_tasks_blocked()
            socket.release()  # "first" written; a's sender writes a and b together (held)
            await trio.testing.wait_all_tasks_blocked()
            assert socket.held and on_the_wire(socket, server) == ["first", "do:a", "do:b"]
            socket.release(trio.BrokenResourceError("connection reset"))
            socket.incoming.close()  # the reader sees the end too: the driver's run ends
    # the driver's run ends with its connection; both requests ended then, neither waiting
    # for the next connection to be sent again
    assert {key: error.sent for key, error in errors.items()} == {"a": True, "b": True}
    assert len(sockets) == 1


async def _put_nothing(messages: Sequence[cb.Message]) -> list[cb.Message]:
    raise AssertionError("nothing is delivered")
