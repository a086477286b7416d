"""Tools to test bots built on trio_chatbridge: fake connectors, platform emulators, clocks."""

from ._fake import FakeConnector as FakeConnector
from ._fake import SentReply as SentReply
from ._run import open_bridge as open_bridge

__all__ = ["FakeConnector", "SentReply", "open_bridge"]
