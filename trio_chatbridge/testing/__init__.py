"""Tools to test bots built on trio_chatbridge: fake connectors, platform emulators, clocks."""

from ..platforms.wecom._protocol import Frame as WeComFrame
from ._admin import Emulator as Emulator
from ._admin import Unsupported as Unsupported
from ._fake import FakeConnector as FakeConnector
from ._fake import SentReply as SentReply
from ._http import HandlerTransport as HandlerTransport
from ._http import serve_http as serve_http
from ._lark import LarkEmulator as LarkEmulator
from ._lark import LarkSent as LarkSent
from ._record import Activity as Activity
from ._record import MediaRecord as MediaRecord
from ._record import Record as Record
from ._redis import RedisServer as RedisServer
from ._redis import have_redis as have_redis
from ._redis import redis_cluster as redis_cluster
from ._redis import redis_server as redis_server
from ._run import AgentFailed as AgentFailed
from ._run import ConnectorsNotUp as ConnectorsNotUp
from ._run import running_bridge as running_bridge
from ._wecom import InFlightLimit as InFlightLimit
from ._wecom import WeComEmulator as WeComEmulator
from ._wecom import WeComSent as WeComSent
from ._weixin import RecordedRequest as RecordedRequest
from ._weixin import WeixinEmulator as WeixinEmulator
from ._weixin import WeixinFault as WeixinFault
from ._weixin import WeixinSentMessage as WeixinSentMessage

__all__ = [
    "AgentFailed",
    "ConnectorsNotUp",
    "Activity",
    "Emulator",
    "FakeConnector",
    "InFlightLimit",
    "LarkEmulator",
    "LarkSent",
    "MediaRecord",
    "WeComEmulator",
    "WeComFrame",
    "WeComSent",
    "HandlerTransport",
    "Record",
    "RecordedRequest",
    "RedisServer",
    "SentReply",
    "Unsupported",
    "WeixinEmulator",
    "WeixinFault",
    "WeixinSentMessage",
    "have_redis",
    "redis_cluster",
    "redis_server",
    "running_bridge",
    "serve_http",
]
