"""The exception hierarchy: one root, a few branches a caller can act on."""

from __future__ import annotations

from typing import Final, TypeVar

E = TypeVar("E", bound=BaseException)


class ChatBridgeError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigurationError(ChatBridgeError, ValueError):
    """A setting given by the user cannot work; the message says which and why."""


class ConnectorError(ChatBridgeError):
    """A connector failed in a way that is worth retrying (network, server hiccup).

    The supervisor restarts the connector with backoff when its ``run`` raises this,
    or any other exception that is not a :class:`FatalConnectorError`.
    """

    retry_after: float | None = None
    """Seconds the platform asked to wait before trying again (an input to the backoff, which
    waits at least this long), or None when it did not say."""


class FatalConnectorError(ChatBridgeError):
    """A connector cannot go on and must not be retried (bad credentials, replaced).

    The supervisor stops that connector alone and shows this error in the bridge's status.
    """


class ProtocolError(ChatBridgeError):
    """Bad input from the network: one frame or response that could not be understood.

    Connectors log and count it, then carry on with the next frame.
    """


class SendError(ChatBridgeError):
    """A reply could not be delivered; the message says to whom and why."""


class MediaError(ChatBridgeError):
    """Media could not be fetched or sent: refused host, too large, timed out, bad key."""


class PlatformError(ChatBridgeError):
    """A platform's API answered with an error code: one branch for every platform's refusals.

    ``platform`` names it (``"weixin"``, ``"wecom"``, ``"lark"``) and ``code`` is the platform's
    own number, so a caller can handle refusals alike across platforms and still tell them apart.
    Each platform package subclasses it (``weixin.ILinkError``, ``wecom.WeComError``,
    ``lark.LarkError``) with the fields that platform reports.
    """

    platform: str = ""
    """The platform that refused, as in ``Message.platform``."""

    def __init__(
        self, message: str, *, platform: str | None = None, code: int | None = None
    ) -> None:
        """``message`` says what was refused and what to do; ``platform`` defaults to the
        class's (a subclass sets it), ``code`` is the platform's own number, if it gave one."""
        super().__init__(message)
        if platform is not None:
            self.platform = platform
        self._code = code

    @property
    def code(self) -> int | None:
        """The platform's error code, if it gave one."""
        return self._code


class StoreError(ChatBridgeError):
    """The store could not do what was asked (corrupt file, wrong schema)."""


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` if it is a ``kind``, else the first ``kind`` inside it (an exception group)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kind)
            if found is not None:
                return found
    return None


def process_stop(exc: BaseException) -> KeyboardInterrupt | SystemExit | None:
    """The KeyboardInterrupt or SystemExit that ``exc`` is, alone in nested exception groups
    of one exception each (what Trio's nurseries make of one raised in a task), or None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, (KeyboardInterrupt, SystemExit)) else None


def sole(group: BaseExceptionGroup[E]) -> E | BaseExceptionGroup[E]:
    """The one exception in ``group`` (what ``except*`` makes of a bare one), or the group."""
    return group.exceptions[0] if len(group.exceptions) == 1 else group


QUOTED: Final = 200
"""Characters of a server's own words (the message of its refusal) that an error's text quotes:
that text goes to logs and a connector's status. The error keeps the whole on an attribute."""


def quoted(said: str) -> str:
    """``said``, a server's words, as an error's text quotes them: its ``repr``, cut to
    :data:`QUOTED` characters, saying how long it was when cut."""
    if len(said) <= QUOTED:
        return repr(said)
    return f"{said[:QUOTED]!r} (cut, of {len(said)} characters)"
