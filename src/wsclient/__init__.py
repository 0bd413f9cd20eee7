"""wsclient: a resilient WebSocket client for long-running market-data feeds.

A :class:`Client` connects, keeps the link alive with a heartbeat, notices dead links (a missed pong,
a silent feed), reconnects with bounded exponential backoff, replays the application's subscriptions
and delivers every inbound frame to the application's handlers without ever blocking the reader.
"""

from .budget import ConnectGate
from .client import Client, Connection, Subscription
from .codec import Codec, GzipJsonCodec, JsonCodec
from .config import ClientConfig, Heartbeat, PingReply, Reconnect, VenueLimits
from .errors import (
    ClientClosedError,
    ConfigError,
    ConnectionLostError,
    GaveUpError,
    HandshakeFailed,
    HandshakeRejected,
    LinkDead,
    OutboxFullError,
    PeerNotReading,
    ProxyError,
    RefreshFailed,
    RequestTimeout,
    TransportClosed,
    UnsafeRedirect,
    WSClientError,
)
from .events import (
    ClientEvent,
    ClientStats,
    Closed,
    Connected,
    ConnectFailed,
    Disconnected,
    GaveUp,
    HeartbeatMissed,
    MessageDropped,
    Reconnecting,
    StateChanged,
)
from .policy import Decision, Failure
from .pool import Pool, PoolStats, ShardInfo, StreamStale
from .resync import (
    BufferOverflow,
    CallbackFailed,
    GapDetected,
    Resync,
    ResyncFailed,
    ResyncOutcome,
    ResyncStats,
    Synced,
)
from .routing import Message, Registration, SequenceGap
from .state import ConnectionState, IllegalTransitionError
from .streams import Stream

__version__ = "0.1.0.dev0"

__all__ = [
    "BufferOverflow",
    "CallbackFailed",
    "Client",
    "ClientClosedError",
    "ClientConfig",
    "ClientEvent",
    "ClientStats",
    "Closed",
    "Codec",
    "ConfigError",
    "ConnectFailed",
    "ConnectGate",
    "Connected",
    "Connection",
    "ConnectionLostError",
    "ConnectionState",
    "Decision",
    "Disconnected",
    "Failure",
    "GapDetected",
    "GaveUp",
    "GaveUpError",
    "GzipJsonCodec",
    "HandshakeFailed",
    "HandshakeRejected",
    "Heartbeat",
    "HeartbeatMissed",
    "IllegalTransitionError",
    "JsonCodec",
    "LinkDead",
    "Message",
    "MessageDropped",
    "OutboxFullError",
    "PeerNotReading",
    "PingReply",
    "Pool",
    "PoolStats",
    "ProxyError",
    "Reconnect",
    "Reconnecting",
    "RefreshFailed",
    "Registration",
    "RequestTimeout",
    "Resync",
    "ResyncFailed",
    "ResyncOutcome",
    "ResyncStats",
    "SequenceGap",
    "ShardInfo",
    "StateChanged",
    "Stream",
    "StreamStale",
    "Subscription",
    "Synced",
    "TransportClosed",
    "UnsafeRedirect",
    "VenueLimits",
    "WSClientError",
    "__version__",
]
