"""Test helpers for code built on wsclient: fault-injecting network components."""

from wsclient.testing.connect_proxy import ConnectRequest, HttpConnectProxy
from wsclient.testing.feed import CHANNELS, DEFAULT_SYMBOLS, Fault, FeedServer, Handshake, ReceivedFrame
from wsclient.testing.proxy import ChaosProxy
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
    "VenueRules",
    "VenueServer",
]
