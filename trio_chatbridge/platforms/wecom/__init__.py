"""WeCom (企业微信) AI Bots: the WebSocket long connection and the encrypted webhook mode."""

from ._convert import to_message as to_message
from ._crypto import WebhookCrypto as WebhookCrypto
from ._long import DEFAULT_MEDIA_HOSTS as DEFAULT_MEDIA_HOSTS
from ._long import LongConnection as LongConnection
from ._protocol import DEFAULT_URL as DEFAULT_URL
from ._protocol import WeComError as WeComError
from ._protocol import WeComEvent as WeComEvent
from ._webhook import Webhook as Webhook
from ._webhook import serve as serve

__all__ = [
    "DEFAULT_MEDIA_HOSTS",
    "DEFAULT_URL",
    "LongConnection",
    "WeComError",
    "WeComEvent",
    "Webhook",
    "WebhookCrypto",
    "serve",
    "to_message",
]
