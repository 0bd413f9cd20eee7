"""The default backend, on the ``websockets`` asyncio implementation."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, NoReturn

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from ..errors import ConfigError, HandshakeFailed, HandshakeRejected, TransportClosed
from ..redact import RedactingLogger, connection_secrets, redact_text
from .base import ConnectOptions, Data, FrameSink, InboundMeter, Meter, Sink, as_sink, kernel_send_queue

__all__ = ["WebsocketsTransport", "connect"]


def _closed(exc: ConnectionClosed) -> TransportClosed:
    if exc.rcvd is not None:
        return TransportClosed(exc.rcvd.code, exc.rcvd.reason, by_peer=True)
    if exc.sent is not None:
        # We sent a close frame and got none back: e.g. 1009 for an oversized message.
        return TransportClosed(exc.sent.code, exc.sent.reason, by_peer=False)
    return TransportClosed(1006, "connection dropped without a close frame", by_peer=True)


class WebsocketsTransport:
    """A :class:`~wsclient.transport.base.Transport` over a ``websockets`` ClientConnection."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    async def pump(self, sink: Sink | FrameSink, meter: InboundMeter | None = None) -> NoReturn:
        recv = self._ws.recv
        sink = as_sink(sink)
        if meter is None:
            meter = Meter()
        monotonic = time.monotonic
        try:
            while True:
                data = await recv()
                # websockets hides its reads: stamp every message.
                meter.last_inbound = monotonic()
                meter.frames_in += 1
                meter.bytes_in += len(data)
                target = sink.inline
                if target is not None:
                    pending = target.dispatch(data)
                    if pending is not None:
                        sink.defer(pending)
                    continue
                wait = sink(data)
                if wait is not None:
                    await wait
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, data: Data) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def ping(self, payload: bytes) -> Awaitable[float]:
        try:
            pong = await self._ws.ping(payload)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return self._pong(pong)

    @staticmethod
    async def _pong(pong: Awaitable[float]) -> float:
        # websockets fails a pending pong with its own ConnectionClosed when the link closes;
        # the interface promises TransportClosed, with the close code the supervisor classifies.
        try:
            return await pong
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, reason)

    def abort(self) -> None:
        self._ws.transport.abort()

    def write_buffer_size(self) -> int:
        transport = self._ws.transport
        return transport.get_write_buffer_size() + kernel_send_queue(transport.get_extra_info("socket"))


async def connect(options: ConnectOptions) -> WebsocketsTransport:
    """Open a connection with ``websockets``; errors are normalised as the interface says."""
    kwargs: dict[str, Any] = {}
    if options.url.startswith("wss:") and options.ssl_context is not None:
        kwargs["ssl"] = options.ssl_context
    try:
        ws = await ws_connect(
            options.url,
            additional_headers=dict(options.headers),
            subprotocols=[s for s in options.subprotocols] or None,  # type: ignore[misc]
            compression=options.compression,
            open_timeout=options.open_timeout,
            # wsclient's heartbeat is the single source of truth for liveness.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            proxy=None,
            logger=RedactingLogger(
                logging.getLogger("websockets.client"), connection_secrets(options.url, options.headers)
            ),
            user_agent_header=options.user_agent or "wsclient (websockets)",
            **kwargs,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise HandshakeRejected(
            response.status_code, dict(response.headers.raw_items()), bytes(response.body or b"")
        ) from None
    except InvalidURI:
        # The URI itself stays out of the message: it may carry a token.
        raise ConfigError("url is not a valid WebSocket URI: use ws(s)://host[:port]/path") from None
    except InvalidHandshake as exc:
        # The server's words may quote our own headers back (a key in a bad accept header): mask.
        secrets = connection_secrets(options.url, options.headers)
        raise HandshakeFailed(redact_text(f"invalid handshake: {exc}", secrets)) from None
    return WebsocketsTransport(ws)
