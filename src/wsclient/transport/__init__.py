"""Transport backends: a thin interface over a WebSocket library.

The supervisor only ever sees :class:`~wsclient.transport.base.Transport`; choosing a backend is a
matter of :func:`get_connector` and the ``ClientConfig.transport`` field.

For tests there is an in-memory backend, imported on its own and handed to the client directly:
``Client(url, connector=MemoryServer().connect)`` with
:class:`~wsclient.transport.memory.MemoryServer` from :mod:`wsclient.transport.memory` (no socket; a
test scripts the server).
"""

from __future__ import annotations

from .base import (
    ConnectOptions,
    Connector,
    FrameSink,
    InboundMeter,
    InlineTarget,
    Meter,
    Sink,
    Transport,
    as_sink,
)

__all__ = [
    "ConnectOptions",
    "Connector",
    "FrameSink",
    "InboundMeter",
    "InlineTarget",
    "Meter",
    "Sink",
    "Transport",
    "as_sink",
    "get_connector",
]


def get_connector(name: str) -> Connector:
    """Return the connect function of the backend called ``name``."""
    if name == "websockets":
        from .websockets import connect

        return connect
    if name == "picows":
        from .picows import connect as picows_connect

        return picows_connect
    raise ValueError(f"unknown transport {name!r}")
