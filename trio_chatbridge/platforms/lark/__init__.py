"""Lark/Feishu bots: events over the long connection (protobuf frames), replies by open API."""

from ..._http import HTTPRefusedError as HTTPRefusedError
from ..._http import HTTPStatusError as HTTPStatusError
from ._answer import CardAnswer as CardAnswer
from ._api import FEISHU as FEISHU
from ._api import LARK as LARK
from ._api import LarkAnswerError as LarkAnswerError
from ._api import LarkError as LarkError
from ._api import OpenAPI as OpenAPI
from ._connector import LongConnection as LongConnection
from ._convert import to_message as to_message
from ._protocol import ClientConfig as ClientConfig
from ._send_policy import EditBudget as EditBudget

__all__ = [
    "FEISHU",
    "LARK",
    "CardAnswer",
    "HTTPRefusedError",
    "HTTPStatusError",
    "ClientConfig",
    "EditBudget",
    "LarkAnswerError",
    "LarkError",
    "LongConnection",
    "OpenAPI",
    "to_message",
]
