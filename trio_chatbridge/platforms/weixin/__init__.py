"""WeChat (Weixin) bots through the iLink bot HTTP API: long poll, replies, media, login."""

from ._api import HTTPStatusError as HTTPStatusError
from ._api import ILinkClient as ILinkClient
from ._api import ILinkError as ILinkError
from ._api import SessionExpiredError as SessionExpiredError
from ._connector import LongPoll as LongPoll
from ._connector import RateLimit as RateLimit
from ._connector import SessionPausedError as SessionPausedError
from ._convert import split_text as split_text
from ._convert import to_message as to_message
from ._login import LoginError as LoginError
from ._login import LoginResult as LoginResult
from ._login import login as login
from ._media import DEFAULT_ALLOWED_HOSTS as DEFAULT_ALLOWED_HOSTS
from ._protocol import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from ._protocol import DEFAULT_CDN_BASE_URL as DEFAULT_CDN_BASE_URL
from ._protocol import CDNMedia as CDNMedia
from ._protocol import GetUpdatesResponse as GetUpdatesResponse
from ._protocol import MessageItem as MessageItem
from ._protocol import TypingStatus as TypingStatus

__all__ = [
    "DEFAULT_ALLOWED_HOSTS",
    "DEFAULT_BASE_URL",
    "DEFAULT_CDN_BASE_URL",
    "CDNMedia",
    "LongPoll",
    "GetUpdatesResponse",
    "HTTPStatusError",
    "ILinkClient",
    "ILinkError",
    "LoginError",
    "LoginResult",
    "MessageItem",
    "RateLimit",
    "SessionExpiredError",
    "SessionPausedError",
    "TypingStatus",
    "split_text",
    "login",
    "to_message",
]
