"""QR login (docs/protocols/weixin.md#qr-login): show a QR code, wait for the owner to scan and
confirm, store the token.

The token and base URL go into the store under the account, where :class:`LongPoll` finds
them when it is built without ``token=``. The token is never printed or logged.

The server names the hosts the login goes on with (``redirect_host``) and the account's API
base (``baseurl``): the token will be sent there, so each must be ``https`` on one of WeChat's
domains (:data:`LOGIN_DOMAINS`), the origin the caller's client was built for (an emulator's,
say), or a host the caller allowed (``allow_hosts``); anything else ends the login with a
:class:`LoginError` naming the host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Final, final
from urllib.parse import urlsplit

import attrs
import trio

from ..._errors import ChatBridgeError, ProtocolError
from ..._http import HTTPRefusedError
from ...stores import Store
from . import _protocol as p
from ._api import ILinkClient
from ._connector import BASE_URL_KEY, TOKEN_KEY
from ._convert import PLATFORM

QR_BASE_URL: Final = p.DEFAULT_BASE_URL  # QR calls always start here, whatever the account base
POLL_PAUSE: Final = 1.0  # seconds between status polls
MAX_QR_CODES: Final = 3
MAX_BAD_ANSWERS: Final = 3
"""Status answers in a row that cannot be read (or are refused) before a login gives up."""
MAX_VERIFY_CODES: Final = 5
"""Verification codes asked for one QR code at most: a server that asks again whatever the
code (or wrong codes typed that often) ends the login."""
LOGIN_DEADLINE: Final = 480.0  # seconds
BOT_ID_KEY: Final = "bot_id"
OWNER_KEY: Final = "owner_user_id"
LOGIN_DOMAINS: Final = ("weixin.qq.com", "wechat.com")
"""Where a server-named login host or API base may be (the domains and their subdomains)."""


class LoginError(ChatBridgeError):
    """The QR login did not complete (expired too often, timed out, refused)."""


@final
@attrs.frozen
class LoginResult:
    """What a completed login gave (the token itself stays in the store)."""

    bot_id: str | None
    base_url: str
    owner_user_id: str | None
    already_bound: bool = False
    """True for ``binded_redirect``: the bot was bound already; the stored token is kept."""


async def login(
    store: Store,
    account: str,
    *,
    client: ILinkClient | None = None,
    show: Callable[[str], None] = print,
    ask_code: Callable[[], Awaitable[str]] | None = None,
    deadline: float = LOGIN_DEADLINE,
    allow_hosts: Collection[str] = (),
) -> LoginResult:
    """Run the QR login for ``account`` and store its token; ``show`` prints instructions.

    ``ask_code`` answers the phone's verification-code prompt (default: read a line).
    ``allow_hosts`` names hosts besides WeChat's own (:data:`LOGIN_DOMAINS`) and the
    client's that the server may send the login or the account to (see the module's doc).
    If cancelled, the login is abandoned: the store holds the whole new login (the
    confirmation had arrived) or none of it.
    """
    owned = client is None
    api = client or ILinkClient(None, base_url=QR_BASE_URL)
    trusted = _Trusted(api.base_url, frozenset(h.lower() for h in allow_hosts))
    try:
        with trio.fail_after(deadline):
            return await _login(store, account, api, trusted, show, ask_code or _read_code)
    except trio.TooSlowError as exc:
        raise LoginError(f"QR login for {account} not confirmed within {deadline:.0f} s") from exc
    finally:
        if owned:
            await api.aclose()


async def _read_code() -> str:
    """A line from the terminal. If cancelled (the login's deadline), the prompt's thread is
    abandoned: it ends with the process, or when a line comes."""
    prompt = "verification code shown on the phone: "
    return (await trio.to_thread.run_sync(input, prompt, abandon_on_cancel=True)).strip()


@attrs.frozen
class _Trusted:
    """Which base URLs the server may name: https on WeChat's domains, the client's own
    origin, or a host the caller allowed."""

    own_base: str
    allowed: frozenset[str]

    def check(self, url: str, what: str) -> str:
        """``url`` normalised, or :class:`LoginError` when the token must not go there."""
        base = p.normalise_base_url(url)
        try:
            parts, own = urlsplit(base), urlsplit(self.own_base)
            scheme, host = parts.scheme, (parts.hostname or "").lower()
            same_origin = (scheme, parts.netloc) == (own.scheme, own.netloc)
        except ValueError:  # an unparseable port or address
            scheme, host, same_origin = "", "", False
        on_domain = any(host == d or host.endswith("." + d) for d in LOGIN_DOMAINS)
        if not (same_origin or host in self.allowed or (scheme == "https" and on_domain)):
            raise LoginError(
                f"the server named {what} {url[:100]!r}, which is not https on "
                f"{' or '.join(LOGIN_DOMAINS)}: refused, the bot token would go there. If "
                "this host is genuine, pass it in login(..., allow_hosts=[...])"
            )
        return base


async def _login(
    store: Store,
    account: str,
    api: ILinkClient,
    trusted: _Trusted,
    show: Callable[[str], None],
    ask_code: Callable[[], Awaitable[str]],
) -> LoginResult:
    old_token = await store.get(PLATFORM, account, TOKEN_KEY)
    base = api.base_url
    for attempt in range(1, MAX_QR_CODES + 1):
        qr = await api.get_bot_qrcode([old_token] if old_token else [])
        code = p.read_str(qr, "qrcode")
        if not code:
            raise LoginError(f"get_bot_qrcode gave no QR code: {sorted(qr)}")
        show(f"Scan this QR code with WeChat ({attempt}/{MAX_QR_CODES}):")
        show(p.read_str(qr, "qrcode_img_content") or code)
        verify: str | None = None
        bad = codes = 0
        while True:
            try:
                answer = await api.get_qrcode_status(code, base=base, verify_code=verify)
            except (ProtocolError, HTTPRefusedError) as exc:  # a proxy's page, a cut answer
                bad += 1
                if bad >= MAX_BAD_ANSWERS:
                    raise LoginError(
                        f"QR login for {account}: {bad} unreadable answers in a row to the "
                        f"status poll; the last: {exc}"
                    ) from exc
                await trio.sleep(POLL_PAUSE)
                continue
            bad = 0
            status = p.read_str(answer, "status") or "wait"
            if status == "confirmed":
                return await _store_login(store, account, answer, trusted, api.base_url)
            if status == "binded_redirect":
                if not old_token:  # none was sent: nothing here to keep
                    raise LoginError(
                        f"QR login for {account}: the server says the bot is bound already, "
                        "but no token is stored for this account (none was sent): log in "
                        "again, or with the store that holds its token"
                    )
                show("This bot is already bound here: keeping the stored token.")
                return LoginResult(
                    None,
                    await store.get(PLATFORM, account, BASE_URL_KEY) or base,
                    None,
                    already_bound=True,
                )
            if status == "need_verifycode":
                if codes >= MAX_VERIFY_CODES:
                    raise LoginError(
                        f"QR login for {account}: the server asked for the phone's "
                        f"verification code {codes + 1} times (the codes given were refused); "
                        "check the code the phone shows and log in again"
                    )
                if codes:  # the last code was not taken: a pause before asking again
                    await trio.sleep(POLL_PAUSE)
                codes += 1
                verify = await ask_code()
                continue  # poll again at once with the code
            if status in ("expired", "verify_code_blocked"):
                show("QR code expired." if status == "expired" else "Too many wrong codes.")
                break
            if status == "scaned":
                verify = None
                show("Scanned: confirm the login on the phone.")
            elif status == "scaned_but_redirect":
                host = p.read_str(answer, "redirect_host")
                if host:
                    base = trusted.check(f"https://{host}", "login host")
            await trio.sleep(POLL_PAUSE)
    raise LoginError(f"QR login for {account}: the code expired {MAX_QR_CODES} times; try again")


async def _store_login(
    store: Store, account: str, answer: dict[str, object], trusted: _Trusted, default_base: str
) -> LoginResult:
    token = p.read_str(answer, "bot_token")
    if not token:
        raise LoginError("login confirmed without a bot_token")
    base_url = trusted.check(p.read_str(answer, "baseurl") or default_base, "API base")
    bot_id = p.read_str(answer, "ilink_bot_id")
    owner = p.read_str(answer, "ilink_user_id")
    values = {TOKEN_KEY: token, BASE_URL_KEY: base_url, BOT_ID_KEY: bot_id, OWNER_KEY: owner}
    await store.set_many(PLATFORM, account, values)  # one write: all of it or nothing
    return LoginResult(bot_id, base_url, owner)
