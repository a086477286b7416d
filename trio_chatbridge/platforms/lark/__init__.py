"""Lark/Feishu bots: events over the long connection (protobuf frames), replies by open API."""

from ._answer import CardAnswer as CardAnswer
from ._api import FEISHU as FEISHU
from ._api import LARK as LARK
from ._api import ClientConfig as ClientConfig
from ._api import LarkError as LarkError
from ._api import OpenAPI as OpenAPI
from ._connector import LongConnection as LongConnection
from ._connector import classify_handshake as classify_handshake
from ._convert import to_message as to_message
from ._frames import Frame as Frame
from ._frames import decode as decode_frame
from ._frames import encode as encode_frame
from ._outbound import EditBudget as EditBudget

__all__ = [
    "FEISHU",
    "LARK",
    "CardAnswer",
    "ClientConfig",
    "EditBudget",
    "Frame",
    "LarkError",
    "LongConnection",
    "OpenAPI",
    "classify_handshake",
    "decode_frame",
    "encode_frame",
    "to_message",
]
