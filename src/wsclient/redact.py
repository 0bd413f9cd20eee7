"""Keep credentials out of logs, reprs, events and exception messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "redact_headers", "redact_url"]

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
