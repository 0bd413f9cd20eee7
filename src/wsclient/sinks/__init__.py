"""Sinks: handlers that hand typed messages on to a message bus, for programs past this process.

* :class:`~wsclient.sinks.nats.NatsJetStreamSink` publishes into NATS JetStream with a message id per
  message: exactly once, also from redundant feeders (``pip install 'wsclient[nats]'``).
* :class:`~wsclient.sinks.redis.RedisStreamSink` appends to Redis Streams (``XADD``) with the message id
  in each entry: at least once, in order; consumers drop the copies a retry may write with
  :class:`~wsclient.sinks.redis.SeenIds` (``pip install 'wsclient[redis]'``).

Each is registered like a handler (``client.on(Trade, sink)``, ``pool.on(Trade, sink)``) and pushes
back on the client when the bus falls behind. The bus libraries are imported only when a sink of
theirs is first named here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Payload, SinkClosedError, SinkStats

if TYPE_CHECKING:
    from .nats import JetStreamSpec, NatsJetStreamSink
    from .redis import RedisStreamSink, SeenIds

__all__ = [
    "JetStreamSpec",
    "NatsJetStreamSink",
    "Payload",
    "RedisStreamSink",
    "SeenIds",
    "SinkClosedError",
    "SinkStats",
]

_LAZY = {
    "JetStreamSpec": "nats",
    "NatsJetStreamSink": "nats",
    "RedisStreamSink": "redis",
    "SeenIds": "redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsclient.sinks' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
