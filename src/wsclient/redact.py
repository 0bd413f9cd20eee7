"""Keep credentials out of logs, reprs, events and exception messages.

Two kinds of masking work together:

* **By pattern**: credential-bearing header lines, token-like query values, URL passwords and
  token-like URL path segments (a Binance listenKey in ``/ws/<listenKey>``) are masked wherever they
  appear, whoever wrote them.
* **By value**: a client knows its own secrets (header values, query values, path tokens, the URL
  password, and whatever the application passes as ``Client(secrets=...)``). A :class:`Redactor`
  masks each of them, and any run of 8 or more characters copied out of one, so that a server quoting
  a token back in a close reason (``1008 "invalid token abcd…"``), cut short or not, is masked too.

Every string that comes from the server (close reasons, handshake bodies and headers, error texts)
passes through the client's :class:`Redactor` before it reaches an event, a log record or an
exception message.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "RedactingLogger",
    "Redactor",
    "connection_secrets",
    "is_secret_header",
    "redact_headers",
    "redact_text",
    "redact_url",
]

MASK = "***"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Query parameter and header names that venues use for credentials and signatures.
_SECRET_PARAM = re.compile(
    r"(token|key|secret|sign|sig|signature|password|passwd|pass|auth|credential|session|jwt)",
    re.IGNORECASE,
)
# A path segment that looks like a bearer token rather than a route: long, from the alphabets of
# tokens (base64url, hex, JWT), with both letters and digits. Routes such as "ws", "v5", "public" or
# "btcusdt@trade" are left readable; a listenKey, a UUID or a JWT is masked.
_TOKEN_SEGMENT = re.compile(r"^(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9._~+=%-]{20,}$")
# Shortest run copied out of a secret that is masked on its own (a quoted, truncated token).
_FRAGMENT = 8


def is_secret_header(name: str) -> bool:
    """Whether a header of this name carries a credential (its value is masked, and it is not sent
    to another origin on a redirect)."""
    return name.lower() in _SECRET_HEADERS or _SECRET_PARAM.search(name) is not None


def _path_tokens(path: str) -> list[str]:
    return [segment for segment in path.split("/") if _TOKEN_SEGMENT.match(segment)]


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """Return ``url`` with the userinfo password, token-like query values and path segments masked.

    ``secrets`` are masked too, wherever they appear in the URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
    path = "/".join(MASK if _TOKEN_SEGMENT.match(s) else s for s in parts.path.split("/"))
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    safe = urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
    extra = [s for s in secrets if s]
    return Redactor(extra).text(safe) if extra else safe


def redact_headers(headers: Mapping[str, str], redactor: Redactor | None = None) -> dict[str, str]:
    """Return a copy of ``headers`` with credential-bearing values masked.

    With a ``redactor``, the other values are passed through it too (a server may echo a secret in
    any header of its response).
    """
    return {
        k: MASK if is_secret_header(k) else (redactor.text(v) if redactor is not None else v)
        for k, v in headers.items()
    }


# A header line carrying a credential, as logged ("> Authorization: …") or inside the repr of raw
# bytes, where line breaks are the four characters \r\n.
_SECRET_HEADER_LINE = re.compile(
    r"(?im)((?:^|\\r\\n|\\n)[^\w\r\n]*"
    r"[\w-]*(?:token|key|secret|sign|sig|password|passwd|pass|auth|credential|session|jwt|cookie)[\w-]*"
    r"[ \t]*:[ \t]*)(?:(?!\\r\\n|\\n)[^\r\n])*"
)
_SECRET_QUERY_VALUE = re.compile(
    r"([?&][^=&\s]*(?:token|key|secret|sign|sig|password|passwd|pass|auth|credential|session|jwt)"
    r"[^=&\s]*=)[^&\s#]*",
    re.IGNORECASE,
)
# Any scheme: a proxy's URL (http://, socks5h://) carries a password as often as a server's.
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]*@", re.IGNORECASE)


class Redactor:
    """Masks a fixed set of secrets, and the patterns of :func:`redact_text`, in any text.

    Built once per client (or connection) from its secrets; :meth:`text` is then cheap enough for
    every event and log line. Besides each whole secret, any run of at least 8 characters copied out
    of a secret of 12 or more characters is masked: servers quote tokens cut short.
    """

    __slots__ = ("_base", "_dynamic", "_long", "_secrets")

    #: Secrets of per-attempt URLs and headers kept (:meth:`add`): the newest ones, bounded.
    DYNAMIC_KEPT = 16

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._base = tuple(secrets)
        self._dynamic: tuple[str, ...] = ()
        self._secrets: tuple[str, ...] = ()
        self._long: tuple[str, ...] = ()
        self._build()

    def _build(self) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = tuple(
            sorted({s for s in (*self._base, *self._dynamic) if len(s) >= 4}, key=len, reverse=True)
        )
        # Only these are searched for fragments. Nothing is precomputed for them: a client holds its
        # redactor for its whole life, and masking runs only when an event or a log line is made.
        self._long = tuple(s for s in self._secrets if len(s) >= 12)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too, from now on, in place (every holder of this redactor sees them): the
        credentials of a URL or headers computed for a connect attempt. Only the newest
        :attr:`DYNAMIC_KEPT` added are kept, so a token renewed every hour for months does not
        grow the list for ever (an expired token is no secret worth the cost)."""
        new = [s for s in secrets if s not in self._dynamic and s not in self._base]
        if not new:
            return
        self._dynamic = (*self._dynamic, *new)[-self.DYNAMIC_KEPT :]
        self._build()

    @property
    def secrets(self) -> tuple[str, ...]:
        """The exact strings masked (longest first)."""
        return self._secrets

    def extended(self, secrets: Iterable[str]) -> Redactor:
        """A redactor masking these secrets as well (e.g. the new ones of a redirect's URL)."""
        return Redactor((*self._secrets, *secrets))

    def text(self, text: str) -> str:
        """Mask credential-bearing header lines, token-like query values, URL passwords, the secrets
        and any long fragment of one."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if self._long and len(text) >= _FRAGMENT:
            text = self._mask_fragments(text)
        text = _SECRET_HEADER_LINE.sub(lambda m: m.group(1) + MASK, text)
        text = _SECRET_QUERY_VALUE.sub(lambda m: m.group(1) + MASK, text)
        return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)

    def _mask_fragments(self, text: str) -> str:
        long = self._long
        n = len(text)
        marked = bytearray(n)
        hit = False
        for i in range(n - _FRAGMENT + 1):
            chunk = text[i : i + _FRAGMENT]
            for secret in long:
                if chunk in secret:
                    marked[i : i + _FRAGMENT] = b"\x01" * _FRAGMENT
                    hit = True
                    break
        if not hit:
            return text
        out: list[str] = []
        i = 0
        while i < n:
            if marked[i]:
                start = i
                while i < n and marked[i]:
                    i += 1
                # A secret such as "Bearer <token>" holds a space: mask the token, keep the spacing.
                run = text[start:i]
                core = run.strip()
                lead = run[: len(run) - len(run.lstrip())]
                trail = run[len(run.rstrip()) :]
                out.append(f"{lead}{MASK}{trail}" if core else run)
            else:
                start = i
                while i < n and not marked[i]:
                    i += 1
                out.append(text[start:i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._secrets)} secret(s)>"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask credential-bearing header lines, token-like query values, URL passwords and ``secrets``."""
    return Redactor(secrets).text(text)


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for the transport library that masks credentials before a record is made.

    The transport logs handshake requests at DEBUG, headers and query string included; this adapter
    formats each message and passes it through a :class:`Redactor` of the connection's secrets.
    """

    def __init__(self, logger: logging.Logger, secrets: Iterable[str] | Redactor) -> None:
        super().__init__(logger, {})
        self._redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", self._redactor.text(text), **kwargs)


def connection_secrets(url: str, headers: Mapping[str, str]) -> list[str]:
    """The credentials of a connection: secret-looking header and query values, token-like path
    segments, the URL password.

    They are masked as exact strings (and by fragment) on top of the pattern-based masking of
    :func:`redact_text`. Harmless values (``symbol=BTC-USD``, ``X-Client-Id``) are left readable.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    values = [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k)]
    values += _path_tokens(parts.path)
    values += [unquote(t) for t in _path_tokens(parts.path)]
    for name, value in headers.items():
        if is_secret_header(name):
            values.append(value)
            values.append(value.split(" ", 1)[-1])  # the token of "Bearer <token>"
    if password:
        values.append(unquote(password))
        # What websockets and picows send for it: "Authorization: Basic base64(user:password)".
        basic = f"{unquote(parts.username or '')}:{unquote(password)}".encode()
        values.append(base64.b64encode(basic).decode())
    return values
