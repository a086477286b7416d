"""WeChat (Weixin) bots through the iLink bot HTTP API: long poll, replies, media, login."""

from ._api import HTTPRefusedError as HTTPRefusedError
from ._api import HTTPStatusError as HTTPStatusError
from ._api import ILinkClient as ILinkClient
from ._api import ILinkError as ILinkError
from ._api import SessionExpiredError as SessionExpiredError
from ._connector import LongPoll as LongPoll
from ._connector import SessionPausedError as SessionPausedError
from ._convert import to_message as to_message
from ._login import LOGIN_DOMAINS as LOGIN_DOMAINS
from ._login import LoginError as LoginError
from ._login import LoginResult as LoginResult
from ._login import login as login
from ._media import DEFAULT_ALLOWED_HOSTS as DEFAULT_ALLOWED_HOSTS
from ._protocol import CONTEXT_TOKEN_TTL as CONTEXT_TOKEN_TTL
from ._protocol import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from ._protocol import DEFAULT_CDN_BASE_URL as DEFAULT_CDN_BASE_URL
from ._sending import RateLimit as RateLimit

__all__ = [
    "CONTEXT_TOKEN_TTL",
    "DEFAULT_ALLOWED_HOSTS",
    "DEFAULT_BASE_URL",
    "DEFAULT_CDN_BASE_URL",
    "LOGIN_DOMAINS",
    "HTTPRefusedError",
    "HTTPStatusError",
    "ILinkClient",
    "ILinkError",
    "LoginError",
    "LoginResult",
    "LongPoll",
    "RateLimit",
    "SessionExpiredError",
    "SessionPausedError",
    "login",
    "to_message",
]
