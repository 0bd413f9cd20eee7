"""Opening a connection: the backend's connector, plus HTTP redirects followed the same way on all.

Backends never follow a redirect themselves (websockets would follow 10, picows 5, and each drops a
different set of headers on the way). :func:`open_connection` does it once for every backend, the way
browsers and ``requests`` do:

* at most ``max_redirects`` hops (301, 302, 303, 307, 308 with a ``Location``), all within one
  ``open_timeout``;
* a hop to another origin (scheme, host or port) drops every credential header the caller gave:
  ``Authorization``, ``Cookie``, ``Proxy-Authorization`` and any header the redaction rules treat as
  secret (``X-Api-Key``, ``X-MBX-APIKEY``, ``OK-ACCESS-SIGN``…); a same-origin hop keeps them, and
  the URL's user info with them;
* a hop from ``wss://`` to plain text, or to a scheme other than ws/wss/http/https, is refused with
  :class:`~wsclient.errors.UnsafeRedirect` (fatal by default);
* a rejected handshake leaves this module with its headers and body passed through the connection's
  :class:`~wsclient.redact.Redactor`, so a token echoed by the server goes no further.

The proxy is chosen here too (:func:`~wsclient.transport.proxy.resolve_proxy`), for every hop: a
redirect to another host may leave the proxy (``NO_PROXY``) or enter it. Its credentials join the
redactor before the backend sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit, urlunsplit

from ..errors import HandshakeFailed, HandshakeRejected, UnsafeRedirect
from ..logs import Log
from ..redact import Redactor, connection_secrets, is_secret_header, redact_headers, redact_url
from .base import ConnectOptions, Connector, Transport
from .proxy import resolve_proxy

__all__ = ["REDIRECT_STATUSES", "Opened", "open_connection"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class Opened:
    """An open connection and how it was reached."""

    transport: Transport
    url: str
    """The URL finally connected to (after redirects); it may hold credentials: mask before showing."""
    redirects: int
    redactor: Redactor
    """The connection's redactor: the client's secrets and those of every URL on the way."""
    proxy: str | None = None
    """The proxy the connection went through, its password masked; None: direct."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)


def _next_url(current: str, location: str, redactor: Redactor) -> str:
    target = urljoin(current, location.strip())
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise HandshakeFailed(f"redirect to a malformed URL: {redactor.text(redact_url(target))}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    shown = redactor.text(redact_url(target))
    if scheme is None or not parts.hostname:
        raise UnsafeRedirect(f"redirect to {shown}: only ws, wss, http and https URLs are followed")
    if urlsplit(current).scheme == "wss" and scheme == "ws":
        raise UnsafeRedirect(f"redirect from wss:// to plain-text {shown} refused")
    return urlunsplit(parts._replace(scheme=scheme))


def _keep_userinfo(old: str, new: str) -> str:
    """Carry the user info of ``old`` over to a same-origin ``new`` that has none of its own."""
    old_parts, new_parts = urlsplit(old), urlsplit(new)
    if "@" not in old_parts.netloc or "@" in new_parts.netloc:
        return new
    userinfo = old_parts.netloc.rpartition("@")[0]
    return urlunsplit(new_parts._replace(netloc=f"{userinfo}@{new_parts.netloc}"))


def redact_rejection(exc: HandshakeRejected, redactor: Redactor) -> HandshakeRejected:
    """A copy of ``exc`` whose headers and body carry none of the connection's secrets."""
    body = redactor.text(exc.body.decode("latin-1")).encode("latin-1") if exc.body else b""
    return HandshakeRejected(exc.status, redact_headers(exc.headers, redactor), body)


async def open_connection(
    connector: Connector,
    options: ConnectOptions,
    *,
    max_redirects: int,
    redactor: Redactor,
    log: Log | None = None,
    proxy: str | Literal[False] | None = False,
) -> Opened:
    """Connect with ``connector``, following redirects as the module says, within ``open_timeout``.

    ``proxy`` is ``ClientConfig.proxy``: a URL, None (from the environment) or False (never); the
    proxy it gives for each URL goes to the connector in ``ConnectOptions.proxy``. Proxy secrets from
    the environment are added to ``redactor`` in place, so that everything the caller writes about
    the attempt masks them too.

    Raises what the connector raises (a rejection redacted), :class:`HandshakeFailed` after more than
    ``max_redirects`` hops, :class:`UnsafeRedirect` for a hop that is refused, ``TimeoutError`` after
    ``open_timeout``.
    """
    url = options.url
    headers = dict(options.headers)
    hops = 0
    via: str | None = None
    base = redactor
    try:
        async with asyncio.timeout(options.open_timeout):
            while True:
                chosen = resolve_proxy(proxy, url)
                proxy_url: str | None = None
                via = None
                if chosen is not None:
                    parsed, source = chosen
                    proxy_url, via = parsed.url, parsed.shown
                    secrets = connection_secrets(parsed.url, {})
                    base.add(secrets)  # the caller's redactor writes the events and log lines
                    redactor.add(secrets)
                    if log is not None:
                        log.debug(
                            "connecting to %s through proxy %s%s",
                            redactor.text(redact_url(url)),
                            via,
                            f" (from {source})" if source != "proxy" else "",
                        )
                attempt = dataclasses.replace(
                    options, url=url, headers=headers, secrets=redactor.secrets, proxy=proxy_url
                )
                try:
                    transport = await connector(attempt)
                except HandshakeRejected as exc:
                    location = exc.headers.get("location") if exc.status in REDIRECT_STATUSES else None
                    if location is None:
                        raise redact_rejection(exc, redactor) from None
                    if hops >= max_redirects:
                        shown = redactor.text(redact_url(urljoin(url, location)))
                        raise HandshakeFailed(
                            f"too many redirects: HTTP {exc.status} to {shown} after {hops} "
                            f"(max_redirects={max_redirects})"
                        ) from None
                    new_url = _next_url(url, location, redactor)
                    if _origin(new_url) == _origin(url):
                        new_url = _keep_userinfo(url, new_url)
                        dropped: list[str] = []
                    else:
                        dropped = [k for k in headers if is_secret_header(k)]
                        headers = {k: v for k, v in headers.items() if k not in dropped}
                    redactor = redactor.extended(connection_secrets(new_url, headers))
                    hops += 1
                    if log is not None:
                        log.info(
                            "handshake redirected (HTTP %d) to %s%s",
                            exc.status,
                            redactor.text(redact_url(new_url)),
                            f"; credential headers not sent to the new origin: {', '.join(dropped)}"
                            if dropped
                            else "",
                        )
                    url = new_url
                    continue
                return Opened(transport, url, hops, redactor, via)
    except TimeoutError:
        if via is None:
            raise
        # Say where the time went: "timed out" alone sends users looking at the server.
        raise TimeoutError(
            f"the connection through proxy {via} was not open within open_timeout ({options.open_timeout:g}s)"
        ) from None
