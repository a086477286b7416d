"""WeCom (企业微信) AI Bots: the WebSocket long connection and the encrypted webhook mode."""

from ._convert import to_message as to_message
from ._crypto import WebhookCrypto as WebhookCrypto
from ._frames import DEFAULT_URL as DEFAULT_URL
from ._frames import Frame as Frame
from ._frames import parse_frame as parse_frame
from ._link import AckTimeout as AckTimeout
from ._link import Link as Link
from ._link import WeComError as WeComError
from ._long import DEFAULT_MEDIA_HOSTS as DEFAULT_MEDIA_HOSTS
from ._long import LongConnection as LongConnection
from ._long import WeComEvent as WeComEvent
from ._webhook import Webhook as Webhook
from ._webhook import serve as serve

__all__ = [
    "DEFAULT_MEDIA_HOSTS",
    "DEFAULT_URL",
    "AckTimeout",
    "Frame",
    "Link",
    "LongConnection",
    "WeComError",
    "WeComEvent",
    "Webhook",
    "WebhookCrypto",
    "parse_frame",
    "serve",
    "to_message",
]
