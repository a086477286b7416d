"""One subscribed WebSocket: commands out, acknowledgements matched back by ``req_id``.

Several replies to one callback share its ``req_id``, so their acks cannot be told apart: at most
one command per ``req_id`` is in flight, the next waits its turn
(docs/protocols/wecom.md#acks-and-ordering). Nothing is kept for a ``req_id`` once nobody is using
it, so memory stays flat however many commands go by (the first AstrBot client kept a lock per
``req_id`` forever). When the socket closes, every waiter fails at once instead of running into its
timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..._errors import ConnectorError, PlatformError, SendError
from . import _frames as f

log = logging.getLogger("trio_chatbridge.wecom")


class WeComError(PlatformError, SendError):
    """The server acknowledged a command with a non-zero errcode (it refused it)."""

    platform = "wecom"

    def __init__(self, cmd: str, errcode: int, errmsg: str | None) -> None:
        self.cmd = cmd
        self.errcode = errcode
        self.errmsg = errmsg
        super().__init__(f"WeCom {cmd} failed: errcode={errcode} errmsg={errmsg!r}")

    @property
    def code(self) -> int:
        """The acknowledgement's ``errcode``."""
        return self.errcode


class AckTimeout(ConnectorError):
    """A command was not acknowledged in time."""


class LinkClosed(ConnectorError):
    """The socket closed before a command was acknowledged.

    ``sent`` says whether the command may have reached the server (False: it never left).
    """

    def __init__(self, reason: str, *, sent: bool) -> None:
        self.reason = reason
        self.sent = sent
        super().__init__(f"WeCom socket closed: {reason}")


@attrs.define(eq=False)
class _Slot:
    lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0
    waiting: trio.Event | None = None
    ack: f.Frame | None = None


@final
class Link:
    """Commands over one WebSocket; :meth:`deliver_ack` is fed by the connection's reader."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        ack_timeout: float = f.ACK_TIMEOUT,
        count: Callable[[str], None] = lambda name: None,
        on_close: Callable[[Link], None] = lambda link: None,
    ) -> None:
        """``on_close`` is called once, when the link closes (the socket is gone)."""
        self._ws = ws
        self._on_close = on_close
        self._ack_timeout = ack_timeout
        self._count = count
        self._slots: dict[str, _Slot] = {}
        self._closed: str | None = None  # why the socket closed

    @property
    def pending(self) -> int:
        """How many ``req_id`` have a command in flight or queued (0 when idle: nothing is kept)."""
        return len(self._slots)

    async def send_frame(self, frame: f.Frame) -> None:
        """Send one frame; :class:`LinkClosed` (``sent=False``) if the socket is gone."""
        if self._closed is not None:
            raise LinkClosed(self._closed, sent=False)
        try:
            await self._ws.send_message(frame.encode())
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc.reason), sent=False) from exc

    async def command(
        self,
        cmd: str,
        req_id: str,
        body: Mapping[str, Any] | None = None,
        *,
        ack_within: float | None = None,
        conflict_retries: int = f.CONFLICT_RETRIES,
    ) -> f.Frame:
        """Send ``cmd`` on ``req_id`` and wait ``ack_within`` seconds for its ack (6000 retried).

        Raises :class:`WeComError` for a non-zero errcode, :class:`AckTimeout`, or
        :class:`LinkClosed` when the socket closes. If cancelled, the command may or may
        not have been sent.
        """
        slot = self._slots.get(req_id)
        if slot is None:
            slot = self._slots[req_id] = _Slot()
        slot.users += 1
        try:
            async with slot.lock:
                retries = f.CONFLICT_BACKOFF.retries(conflict_retries)
                while True:
                    frame = f.Frame(req_id, cmd, body or {})
                    ack = await self._exchange(slot, frame, ack_within)
                    if ack.errcode == f.COMMAND_CONFLICT and not retries.spent:
                        self._count("command_conflicts")
                        await retries.wait()
                        continue
                    if ack.errcode:
                        raise WeComError(cmd, ack.errcode, ack.errmsg)
                    return ack
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[req_id]

    async def _exchange(self, slot: _Slot, frame: f.Frame, ack_within: float | None) -> f.Frame:
        slot.waiting, slot.ack = trio.Event(), None
        try:
            await self.send_frame(frame)
            with trio.move_on_after(self._ack_timeout if ack_within is None else ack_within):
                await slot.waiting.wait()
            if slot.ack is None:
                if self._closed is not None:
                    raise LinkClosed(self._closed, sent=True)
                raise AckTimeout(f"WeCom {frame.cmd} ({frame.req_id}) not acknowledged in time")
            return slot.ack
        finally:
            slot.waiting = None

    def deliver_ack(self, frame: f.Frame) -> None:
        """Hand an ack to the command waiting on its ``req_id`` (a stray one is counted)."""
        slot = self._slots.get(frame.req_id)
        if slot is None or slot.waiting is None:
            self._count("stray_acks")
            return
        slot.ack = frame
        slot.waiting.set()

    def close(self, reason: str) -> None:
        """Fail every waiter now: the socket is gone."""
        if self._closed is None:
            self._on_close(self)
        self._closed = reason
        for slot in self._slots.values():
            if slot.waiting is not None:
                slot.waiting.set()
