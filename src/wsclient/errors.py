"""Exceptions raised by wsclient.

Every error a user can catch derives from :class:`WSClientError`. Errors about a failed connection
carry the cause so that logs and ``wait_closed()`` say *why*, not only *that*.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

__all__ = [
    "ClientClosedError",
    "ConfigError",
    "ConnectionLostError",
    "GaveUpError",
    "HandshakeFailed",
    "HandshakeRejected",
    "LinkDead",
    "OutboxFullError",
    "PeerNotReading",
    "ProxyError",
    "RequestTimeout",
    "TransportClosed",
    "UnsafeRedirect",
    "WSClientError",
]


class WSClientError(Exception):
    """Base class of every wsclient error."""


class ConfigError(WSClientError, ValueError):
    """A constructor argument is invalid. The message names the argument and the fix."""


class ClientClosedError(WSClientError):
    """The client was closed or has failed; it cannot send any more."""


class OutboxFullError(WSClientError):
    """``send()`` while disconnected found the outbox full under the ``"raise"`` overflow policy."""


class ConnectionLostError(WSClientError):
    """The connection dropped while a send or a request was in flight.

    A send that raises this may or may not have reached the server: wsclient never re-sends it on its
    own, because re-sending an order twice is worse than reporting it once.
    """


class RequestTimeout(WSClientError, TimeoutError):
    """``client.request()`` got no reply within its timeout."""


class TransportClosed(WSClientError):
    """The WebSocket connection is closed; ``code`` and ``reason`` come from the close frame.

    ``code`` is 1006 when the connection dropped without a close frame, 1005 when the frame had no code.
    """

    def __init__(self, code: int, reason: str = "", *, by_peer: bool = True) -> None:
        super().__init__(f"connection closed with code {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class PeerNotReading(TransportClosed):
    """The client failed the link because the peer stopped reading while making the client write.

    Pongs (and other automatic replies) to a peer that reads nothing pile up in the client's write
    buffer; past a bound the client sends close 1008 and aborts the socket rather than buffer without
    end (a ping flood from a server that never reads, say). Retried like any other lost link, and
    counted in ``ClientStats.write_stalls``.
    """


class LinkDead(WSClientError):
    """The heartbeat or the silence watchdog declared the link dead (no pong, or a silent feed)."""

    def __init__(self, kind: str, waited: float) -> None:
        what = "no pong" if kind == "pong" else "no inbound frame"
        super().__init__(f"link declared dead: {what} for {waited:.3f}s")
        self.kind = kind
        self.waited = waited


class HandshakeRejected(WSClientError):
    """The server answered the WebSocket upgrade with a non-101 HTTP status."""

    def __init__(self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> None:
        super().__init__(f"server rejected the WebSocket handshake with HTTP {status}")
        self.status = status
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait according to the ``Retry-After`` header (delta-seconds or HTTP-date)."""
        return parse_retry_after(self.headers.get("retry-after"))


class HandshakeFailed(WSClientError):
    """The opening handshake failed for a protocol reason (malformed response, bad accept key…)."""


class UnsafeRedirect(HandshakeFailed):
    """The handshake was redirected where wsclient will not follow: from ``wss://`` to plain text,
    or to a scheme other than ws/wss/http/https. Fatal by default: retrying leads to the same place.
    """


class ProxyError(HandshakeFailed):
    """The proxy did not open the tunnel to the server: unreachable, refused, or not speaking its
    protocol.

    ``proxy`` is the proxy's URL with its password masked. A refusal carries what the proxy said:
    ``status`` and ``headers`` of an HTTP proxy's answer to ``CONNECT`` (407, 403, 502…), or
    ``code``, a SOCKS reply code. ``fatal`` is true when the proxy refused the credentials (HTTP
    407, or 401 as some send; a SOCKS authentication failure): retrying cannot help, so the client
    gives up like it does for a server's 401. Every other proxy failure is retried with backoff, and
    a ``Retry-After`` on the proxy's answer is honoured like a server's.
    """

    def __init__(
        self,
        message: str,
        *,
        proxy: str,
        status: int | None = None,
        code: int | None = None,
        fatal: bool = False,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.status = status
        self.code = code
        self.fatal = fatal
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait according to the proxy's ``Retry-After`` header, if it sent one."""
        return parse_retry_after(self.headers.get("retry-after"))


class RefreshFailed(HandshakeFailed):
    """The application's function giving the URL or the headers of a connect attempt raised (a
    listenKey or a token could not be renewed). Retried with backoff like a failed handshake; the
    cause is chained."""


class GaveUpError(WSClientError):
    """The client stopped reconnecting: a fatal error, or the retry budget ran out.

    ``cause`` is the last error, ``attempts`` the number of consecutive failed attempts, ``fatal``
    whether the cause was fatal by policy (as opposed to the budget running out).
    """

    def __init__(
        self, cause: BaseException, attempts: int, *, fatal: bool, reason: str | None = None
    ) -> None:
        why = "fatal error" if fatal else f"gave up after {attempts} attempt(s)"
        super().__init__(f"{why}: {reason or f'{type(cause).__name__}: {cause}'}")
        self.cause = cause
        self.attempts = attempts
        self.fatal = fatal


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header into seconds from now; ``None`` when absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
