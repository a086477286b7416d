"""The emulators' shared control API: the same verbs in Python and over loopback HTTP.

Every emulator is an :class:`Emulator`: a test (or a test helper taking any emulator) makes a
user speak, send media or a quote, enter a chat; pushes any event; drops the connection; makes
the next requests fail; changes heartbeat settings; and reads everything the bot did. The
loopback admin API (``{admin_url}/...``, documented with its JSON bodies in docs/testing.md)
is a thin layer over the same methods, so a bot in any language can test what ours can.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Final, Protocol, TypeAlias, runtime_checkable

import httpx

from .._errors import ProtocolError
from .._json import get_str, json_value
from ._http import json_response
from ._record import Activity, Record

ADMIN_MAX_BYTES: Final = 64 * 1024 * 1024  # an admin request may carry media as base64


class Unsupported(Exception):
    """The platform has no such thing (WeChat has no "enter chat" event)."""


class Refused(Exception):
    """The emulated platform refuses what the user would do (WeCom: 3 messages in flight)."""


@runtime_checkable
class Emulator(Protocol):
    """What every emulator offers: the same verbs as its loopback admin API.

    Ids returned are the platform's: WeCom a callback's ``req_id``, Lark an IM message id,
    WeChat a message id. Settings and fault targets are per platform (see each platform's
    page); a name the emulator does not know raises :class:`KeyError`.
    """

    platform: str
    activity: Record[Activity]
    """Everything the bot did, oldest first (``GET {admin_url}/sent``)."""

    async def handle_http(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request (the admin API under ``/admin``), in memory or served.

        Cancelled, the request goes unanswered; what it recorded stays."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a client needs to connect, ``admin_url`` included."""
        ...

    def say(
        self, user: str, text: str, *, chat: str | None = None, quote: str | None = None
    ) -> str:
        """``user`` sends ``text`` (in group ``chat``, to the bot; quoting ``quote``)."""
        ...

    def say_media(
        self, user: str, data: bytes, *, kind: str = "image", filename: str = "file.bin"
    ) -> str:
        """``user`` sends an image, file, video or voice clip."""
        ...

    def enter(self, user: str) -> str:
        """``user`` opens the chat with the bot; :class:`Unsupported` where there is no such
        event."""
        ...

    def push_event(self, event: Mapping[str, Any]) -> str:
        """Deliver any event as the platform would (see each platform's page for the shape)."""
        ...

    async def drop_connection(self) -> None:
        """Cut the bot's connection (a long poll in progress, or the WebSocket) at once.

        Cancelled, the connection may or may not be cut."""
        ...

    def fail_next(self, what: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``what`` (a command, endpoint or path) with
        error ``code`` (an HTTP status where the platform answers one for it)."""
        ...

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (heartbeat, pong config...); returns them all as they now are."""
        ...


def apply_settings(
    target: object, names: Mapping[str, tuple[type, ...]], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Set each of ``settings`` on ``target`` after checking its name and type (all or
    none); returns every setting in ``names`` as it now is."""
    for name, value in settings.items():
        if name not in names:
            raise KeyError(f"unknown setting {name!r}; settings: {sorted(names)}")
        kinds = names[name]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise TypeError(f"setting {name!r} takes {' or '.join(k.__name__ for k in kinds)}")
    for name, value in settings.items():
        setattr(target, name, value)
    return {name: getattr(target, name) for name in names}


class UserVerbs:
    """The shared verbs an emulator gets from its own ``user_says`` and ``SETTINGS``."""

    SETTINGS: ClassVar[Mapping[str, tuple[type, ...]]] = {}

    def user_says(
        self, user: str, text: str, *, chat: str | None = None, quote: str | None = None
    ) -> str:
        raise NotImplementedError

    def say(
        self, user: str, text: str, *, chat: str | None = None, quote: str | None = None
    ) -> str:
        """``user`` sends ``text``: :meth:`user_says`, the platform's own verb."""
        return self.user_says(user, text, chat=chat, quote=quote)

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change any of ``SETTINGS``; returns them all as they now are."""
        return apply_settings(self, self.SETTINGS, settings)


async def handle_admin(emu: Emulator, request: httpx.Request) -> httpx.Response:
    """Answer one ``/admin/...`` request by calling the emulator's method of the same verb.

    Cancellation: each verb calls one emulator method; cancelled, that method's own
    guarantee holds (only ``drop`` awaits anything), and no response is made.
    """
    verb = request.url.path.removeprefix("/admin").strip("/")
    try:
        body = json_value(request.content or b"{}", "admin request", max_bytes=ADMIN_MAX_BYTES)
        route = _ROUTES.get((request.method, verb))
        if route is None:
            return json_response(
                {"error": f"no {request.method} {request.url.path}; see {VERBS}"}, 404
            )
        return json_response(await route(emu, request, body))
    except KeyError as exc:  # an unknown setting or fault target
        return json_response({"error": str(exc.args[0])}, 400)
    except (ProtocolError, ValueError, TypeError, Unsupported) as exc:
        return json_response({"error": str(exc)}, 400)
    except Refused as exc:
        return json_response({"error": str(exc)}, 429)


VERBS: Final = (
    "POST messages, enter, events, drop, faults, config; GET sent (?since=N&kind=K), config"
)


async def _get_sent(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    since = int(request.url.params.get("since", "0"))
    kind = request.url.params.get("kind")
    return [a.as_json() for a in emu.activity[since:] if kind in (None, a.kind)]


async def _get_config(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    return emu.configure()


async def _post_messages(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    said = body if isinstance(body, list) else [body]
    ids = [_say(emu, _object(one)) for one in said]
    return {"ok": True, "id": ids[0] if len(ids) == 1 else ids}


async def _post_enter(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    return {"ok": True, "id": emu.enter(_required(_object(body), "user"))}


async def _post_events(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    return {"ok": True, "id": emu.push_event(_object(_object(body).get("event")))}


async def _post_drop(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    _object(body)  # no fields, but a body there is still an object
    await emu.drop_connection()
    return {"ok": True}


async def _post_faults(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    fields = _object(body)
    code, times = fields.get("code"), fields.get("times", 1)
    if not isinstance(code, int) or not isinstance(times, int) or times < 1:
        raise ValueError('expected {"what": ..., "code": <int>, "times": <int >= 1>}')
    emu.fail_next(_required(fields, "what"), code, times)
    return {"ok": True}


async def _post_config(emu: Emulator, request: httpx.Request, body: Any) -> Any:
    return {"ok": True, "config": emu.configure(**_object(body))}


_Route: TypeAlias = Callable[[Emulator, httpx.Request, Any], Awaitable[Any]]
_ROUTES: Final[Mapping[tuple[str, str], _Route]] = {
    ("GET", "sent"): _get_sent,
    ("GET", "config"): _get_config,
    ("POST", "messages"): _post_messages,
    ("POST", "enter"): _post_enter,
    ("POST", "events"): _post_events,
    ("POST", "drop"): _post_drop,
    ("POST", "faults"): _post_faults,
    ("POST", "config"): _post_config,
}


def _say(emu: Emulator, said: Mapping[str, Any]) -> str:
    user, chat = _required(said, "user"), get_str(said, "chat")
    media = said.get("media")
    if media is not None:
        media = _object(media)
        try:
            data = base64.b64decode(_required(media, "data"), validate=True)
        except binascii.Error as exc:
            raise ValueError("media.data must be base64") from exc
        return emu.say_media(
            user,
            data,
            kind=get_str(media, "kind") or "image",
            filename=get_str(media, "filename") or "file.bin",
        )
    return emu.say(user, _required(said, "text"), chat=chat, quote=get_str(said, "quote"))


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _required(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} (a non-empty string) is required")
    return value
