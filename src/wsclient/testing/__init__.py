"""Test helpers for code built on wsclient: fault-injecting network components, and a server that
replays a recorded session."""

from wsclient.testing.connect_proxy import ConnectRequest, HttpConnectProxy
from wsclient.testing.feed import CHANNELS, DEFAULT_SYMBOLS, Fault, FeedServer, Handshake, ReceivedFrame
from wsclient.testing.proxy import ChaosProxy
from wsclient.testing.replay import ReplayServer
from wsclient.testing.threaded import ServerThread
from wsclient.testing.venue import VenueRules, VenueServer

__all__ = [
    "CHANNELS",
    "DEFAULT_SYMBOLS",
    "ChaosProxy",
    "ConnectRequest",
    "Fault",
    "FeedServer",
    "Handshake",
    "HttpConnectProxy",
    "ReceivedFrame",
    "ReplayServer",
    "ServerThread",
    "VenueRules",
    "VenueServer",
]
