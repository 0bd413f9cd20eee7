"""Keep credentials out of logs, reprs, events and exception messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "RedactingLogger", "connection_secrets", "redact_headers", "redact_text", "redact_url"]

MASK = "***"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Query parameter names that venues use for credentials and signatures.
_SECRET_PARAM = re.compile(
    r"(token|key|secret|sign|sig|signature|password|passwd|pass|auth|credential|session|jwt)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """Return ``url`` with the userinfo password and token-like query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``headers`` with credential-bearing values masked."""
    return {
        k: MASK if k.lower() in _SECRET_HEADERS or _SECRET_PARAM.search(k) else v for k, v in headers.items()
    }


_SECRET_HEADER_LINE = re.compile(
    r"(?im)^(\W*(?:authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key)\s*:\s*).*$"
)
_SECRET_QUERY_VALUE = re.compile(
    r"([?&][^=&\s]*(?:token|key|secret|sign|sig|password|passwd|pass|auth|credential|session|jwt)"
    r"[^=&\s]*=)[^&\s#]*",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(wss?://[^/\s:@]*:)[^@/\s]*@", re.IGNORECASE)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask credential-bearing header lines, token-like query values, URL passwords and ``secrets``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _SECRET_HEADER_LINE.sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_QUERY_VALUE.sub(lambda m: m.group(1) + MASK, text)
    return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for the transport library that masks credentials before a record is made.

    The transport logs handshake requests at DEBUG, headers and query string included; this adapter
    formats each message and passes it through :func:`redact_text` with the connection's own secrets.
    """

    def __init__(self, logger: logging.Logger, secrets: Iterable[str]) -> None:
        super().__init__(logger, {})
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", redact_text(text, self._secrets), **kwargs)


def connection_secrets(url: str, headers: Mapping[str, str]) -> list[str]:
    """The credentials of a connection: secret-looking header and query values, the URL password.

    Transport backends mask these exact strings in their libraries' debug logs and in handshake
    errors, on top of the pattern-based masking of :func:`redact_text`. Harmless values
    (``symbol=BTC-USD``, ``X-Client-Id``) are left readable.
    """
    parts = urlsplit(url)
    values = [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k)]
    for name, value in headers.items():
        if name.lower() in _SECRET_HEADERS or _SECRET_PARAM.search(name):
            values.append(value)
            values.append(value.split(" ", 1)[-1])  # the token of "Bearer <token>"
    if parts.password:
        values.append(unquote(parts.password))
    return values
