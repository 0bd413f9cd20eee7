"""Proxies: which one a connection goes through, and the tunnel through it.

wsclient decides on the proxy itself and runs the proxy's handshake itself, on a plain socket, before
any backend sees the connection; the backend then runs TLS (for ``wss://``) and the WebSocket
handshake over the tunnel. So both backends behave the same: the same environment variables, the
same errors, the whole step within ``open_timeout`` (picows' own ``CONNECT`` has no timeout,
websockets reads ``SOCKS_PROXY`` but not ``ALL_PROXY``, picows reads no variable at all).

* **Which proxy** (:func:`resolve_proxy`, asked at every connect attempt and redirect hop, since the
  URL may change): ``ClientConfig.proxy`` when it is a URL; none when it is ``False``; when it is
  ``None`` (the default), the environment as curl reads it: ``https_proxy`` / ``HTTPS_PROXY`` for
  ``wss://``, ``http_proxy`` / ``HTTP_PROXY`` for ``ws://``, then ``all_proxy`` / ``ALL_PROXY``, the
  lower-case name first; ``no_proxy`` / ``NO_PROXY`` lists the hosts reached directly.
* **The tunnel** (:func:`open_tunnel`): HTTP ``CONNECT`` is written here (a few lines, and the
  proxy's whole answer is needed: the status, ``Proxy-Authenticate``, ``Retry-After``); SOCKS4,
  SOCKS4a, SOCKS5 and SOCKS5h go through ``python-socks``, the library websockets, aiohttp-socks and
  picows use for it.
* **Errors** are :class:`~wsclient.errors.ProxyError`, naming the proxy with its password masked:
  credentials refused (HTTP 407, SOCKS authentication) are fatal, anything else (the proxy down,
  403/502/503, a SOCKS "host unreachable") is retried like any failed connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

# websockets' helper: the same Basic header both backends send for a URL's own user info.
from websockets.headers import build_authorization_basic

from ..errors import ConfigError, ProxyError
from ..redact import redact_url

__all__ = [
    "PROXY_SCHEMES",
    "ProxyURL",
    "bypass_proxy",
    "open_tunnel",
    "proxy_from_environment",
    "resolve_proxy",
]

#: The proxy URL schemes wsclient speaks. ``socks5h`` and ``socks4a`` let the proxy resolve the
#: server's name; ``socks5`` and ``socks4`` resolve it locally (curl's meaning of each).
PROXY_SCHEMES = frozenset({"http", "socks5", "socks5h", "socks4", "socks4a"})

#: The port of a proxy URL from the environment that gives none (curl's default for every scheme).
ENV_DEFAULT_PORT = 1080

_MAX_RESPONSE_HEAD = 64 * 1024
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed and checked proxy URL."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None
    url: str
    """As given: it may hold the password, mask it (:attr:`shown`) before writing it anywhere."""

    @property
    def shown(self) -> str:
        """The URL with its password masked."""
        return redact_url(self.url)

    @classmethod
    def parse(cls, url: str, *, source: str = "proxy", default_port: int | None = None) -> ProxyURL:
        """Parse ``url``; a bad one raises :class:`ConfigError` naming ``source`` and the fix.

        ``default_port`` is used when the URL gives none; without it a port is required.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(
                f"{source} is not a valid proxy URL ({exc}): write e.g. 'http://host:3128' or "
                "'socks5h://host:1080'"
            ) from None
        shown = redact_url(url)
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ConfigError(
                f"{source} ({shown}) is an https:// proxy (TLS to the proxy), which wsclient does not "
                "support: use the proxy's plain http:// port (a wss:// connection stays end-to-end "
                "TLS through the tunnel), or a SOCKS proxy"
            )
        if scheme not in PROXY_SCHEMES:
            raise ConfigError(
                f"{source} ({shown}) has scheme {scheme or 'none'!r}: use one of http, socks5, "
                "socks5h, socks4, socks4a (e.g. 'http://host:3128', 'socks5h://host:1080')"
            )
        if not parts.hostname:
            raise ConfigError(f"{source} ({shown}) has no host: write {scheme}://host:port")
        if port is None:
            if default_port is None:
                raise ConfigError(
                    f"{source} ({shown}) has no port: write it, e.g. {scheme}://{parts.hostname}:"
                    f"{3128 if scheme == 'http' else 1080}"
                )
            port = default_port
        if port == 0:
            raise ConfigError(f"{source} ({shown}) has port 0: write the port the proxy listens on")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                f"{source} ({shown}) has a path or query: a proxy URL is only scheme://[user:password@]host:port"
            )
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if scheme.startswith("socks4") and password is not None:
            raise ConfigError(
                f"{source} ({shown}) gives a password, which SOCKS4 cannot send (only a user id): "
                "use socks5:// or socks5h:// for user and password, or drop the password"
            )
        return cls(scheme, parts.hostname, port, username, password, url)


def check_proxy_setting(value: object) -> str | Literal[False] | None:
    """Validate ``ClientConfig.proxy``; raise ``ValueError`` with the fix (pydantic reports it)."""
    if value is None or value is False:
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(
            "proxy must be a proxy URL such as 'http://host:3128' or 'socks5h://user:password@host:1080', "
            "None (the default: from the environment, HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY) "
            f"or False (never a proxy), not {value!r}"
        )
    try:
        ProxyURL.parse(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


# -- which proxy --------------------------------------------------------------------------------------


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The value of ``name`` (lower case first, as curl reads it) and the variable it came from."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return value, variable
    return None


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower().rstrip("."), parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``host:port`` is reached directly under ``no_proxy`` (the ``NO_PROXY`` list).

    Entries are separated by commas (or spaces): ``*`` matches every host; a name matches itself and
    every name under it, with or without a leading dot (``example.com`` and ``.example.com`` both
    match ``ws.example.com``); an IP address matches itself, a CIDR block (``10.0.0.0/8``) every
    address in it; ``entry:port`` only that port.
    """
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):  # [::1] or [::1]:8080
            inside, _, rest = entry[1:].partition("]")
            entry = inside
            if rest.startswith(":") and rest[1:].isdigit():
                entry_port = int(rest[1:])
        elif entry.count(":") == 1:  # host:port (an IPv6 address has more colons)
            name, _, digits = entry.partition(":")
            if digits.isdigit():
                entry, entry_port = name, int(digits)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass  # a name: an IP address is only matched by addresses and blocks
            continue
        entry = entry.lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def proxy_from_environment(url: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The proxy the environment gives for ``url``, with the variable it came from; None: direct.

    ``https_proxy`` for ``wss://``, ``http_proxy`` for ``ws://``, then ``all_proxy``, each name in
    lower case before upper case; a host ``no_proxy`` lists is reached directly. As in Python's
    ``urllib``, ``HTTP_PROXY`` is ignored in a CGI script (``REQUEST_METHOD`` set), where a request's
    ``Proxy:`` header would have set it ("httpoxy"). A value without a scheme is an HTTP proxy.
    """
    env = os.environ if environ is None else environ
    scheme = urlsplit(url).scheme
    found = None
    if scheme == "wss":
        found = _env(env, "https_proxy")
    elif scheme == "ws":
        found = _env(env, "http_proxy")
        if found is not None and found[1] == "HTTP_PROXY" and "REQUEST_METHOD" in env:
            found = None
    if found is None:
        found = _env(env, "all_proxy")
    if found is None:
        return None
    no_proxy = _env(env, "no_proxy")
    if no_proxy is not None:
        host, port = _target(url)
        if bypass_proxy(host, port, no_proxy[0]):
            return None
    value, variable = found
    if "://" not in value:
        value = f"http://{value}"
    return value, variable


def resolve_proxy(
    setting: str | Literal[False] | None, url: str, environ: Mapping[str, str] | None = None
) -> tuple[ProxyURL, str] | None:
    """The proxy for a connection to ``url`` under ``ClientConfig.proxy`` = ``setting``, and where
    it came from (``"proxy"`` or the variable's name); None: connect directly.

    A bad proxy URL in the environment raises :class:`ConfigError` naming the variable (fatal: every
    attempt would meet it).
    """
    if setting is False:
        return None
    if setting is not None:
        return ProxyURL.parse(setting), "proxy"
    found = proxy_from_environment(url, environ)
    if found is None:
        return None
    value, variable = found
    return ProxyURL.parse(value, source=variable, default_port=ENV_DEFAULT_PORT), variable


# -- the tunnel ---------------------------------------------------------------------------------------


async def open_tunnel(proxy: str, url: str, *, user_agent: str | None = None) -> socket.socket:
    """A socket connected through ``proxy`` to the host and port of ``url``, ready for TLS or the
    WebSocket handshake; the caller owns it. Unbounded in time: the caller bounds it
    (``open_timeout``); a cancelled or failed attempt leaves no socket open.

    Raises :class:`~wsclient.errors.ProxyError`.
    """
    parsed = ProxyURL.parse(proxy, default_port=ENV_DEFAULT_PORT)
    host, port = _target(url)
    if parsed.scheme == "http":
        sock = await _dial(parsed)
        try:
            await _http_connect(sock, parsed, host, port, user_agent)
        except BaseException:
            sock.close()
            raise
        return sock
    return await _socks_connect(parsed, host, port)


async def _dial(proxy: ProxyURL) -> socket.socket:
    """A TCP connection to the proxy: each of its addresses in turn."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyError(
            f"cannot reach proxy {proxy.shown}: {exc.strerror or exc}", proxy=proxy.shown
        ) from exc
    last: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    why = "connection refused" if isinstance(last, ConnectionRefusedError) else str(last or "no address")
    raise ProxyError(f"cannot reach proxy {proxy.shown}: {why}", proxy=proxy.shown) from last


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _http_connect(
    sock: socket.socket, proxy: ProxyURL, host: str, port: int, user_agent: str | None
) -> None:
    """``CONNECT host:port``, and the proxy's answer read up to its blank line, not a byte further:
    what follows belongs to the tunnel."""
    loop = asyncio.get_running_loop()
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent or 'wsclient'}"]
    if proxy.username is not None:
        lines.append(
            f"Proxy-Authorization: {build_authorization_basic(proxy.username, proxy.password or '')}"
        )
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = bytearray()
    while (end := head.find(b"\r\n\r\n")) < 0:
        if len(head) > _MAX_RESPONSE_HEAD:
            raise ProxyError(
                f"proxy {proxy.shown} answered CONNECT with over {_MAX_RESPONSE_HEAD} bytes of headers",
                proxy=proxy.shown,
            )
        # One byte at a time would be exact; a proxy says nothing after its blank line until the
        # client speaks (the WebSocket upgrade), so whole reads lose nothing, and extra bytes are an error.
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ProxyError(
                f"proxy {proxy.shown} closed the connection before answering CONNECT {authority}",
                proxy=proxy.shown,
            )
        head += chunk
    status_line, *header_lines = bytes(head[:end]).decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ProxyError(
            f"proxy {proxy.shown} is not an HTTP proxy: it answered CONNECT with {status_line[:60]!r}",
            proxy=proxy.shown,
        )
    status = int(code)
    extra = bytes(head[end + 4 :])
    if 200 <= status < 300:
        if extra:
            raise ProxyError(
                f"proxy {proxy.shown} sent {len(extra)} bytes after its answer to CONNECT, before the "
                "client spoke",
                proxy=proxy.shown,
            )
        return
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    # 407 is the standard answer; some proxies (tinyproxy) answer bad credentials with 401.
    auth = status in (401, 407)
    hint = _auth_hint(proxy) if auth else ""
    raise ProxyError(
        f"proxy {proxy.shown} refused CONNECT {authority}: HTTP {status} {reason.strip()}{hint}".rstrip(),
        proxy=proxy.shown,
        status=status,
        fatal=auth,
        headers=headers,
        body=extra[:4096],
    )


def _auth_hint(proxy: ProxyURL) -> str:
    if proxy.username is None:
        return ": the proxy wants credentials, put user:password@ before its host in the proxy URL"
    return ": the proxy refused the user and password of the proxy URL"


# SOCKS4 reply 0x5D: the proxy's identd says the user id is not the client's, its kind of auth failure.
_SOCKS4_BAD_USER = 0x5D


async def _socks_connect(proxy: ProxyURL, host: str, port: int) -> socket.socket:
    from python_socks import ProxyConnectionError, ProxyType
    from python_socks import ProxyError as SocksError
    from python_socks.async_.asyncio import Proxy

    kind = ProxyType.SOCKS5 if proxy.scheme.startswith("socks5") else ProxyType.SOCKS4
    client = Proxy(
        kind,
        proxy.host,
        proxy.port,
        # python-socks sends user and password only when both are given; SOCKS4 sends the user id.
        username=proxy.username,
        password=proxy.password if kind is ProxyType.SOCKS5 else None,
        rdns=proxy.scheme in ("socks5h", "socks4a"),
        loop=asyncio.get_running_loop(),
    )
    authority = _authority(host, port)
    try:
        # python-socks' own timeout is needed by its API; the caller's open_timeout is shorter.
        sock: socket.socket = await client.connect(host, port, timeout=3600)
    except ProxyConnectionError as exc:
        why = "connection refused" if exc.errno == errno.ECONNREFUSED else (exc.strerror or str(exc))
        raise ProxyError(f"cannot reach proxy {proxy.shown}: {why}", proxy=proxy.shown) from exc
    except SocksError as exc:
        code = exc.error_code if isinstance(exc.error_code, int) else None
        text = str(exc)
        # python-socks marks the reply codes of the CONNECT step; the authentication step's
        # failures carry none, and say so in their message.
        auth = (code is None and "authentication" in text.lower()) or code == _SOCKS4_BAD_USER
        hint = _auth_hint(proxy) if auth else ""
        raise ProxyError(
            f"{proxy.scheme} proxy {proxy.shown} refused the tunnel to {authority}: {text}"
            + (f" (reply code {code:#04x})" if code is not None else "")
            + hint,
            proxy=proxy.shown,
            code=code,
            fatal=auth,
        ) from exc
    with contextlib.suppress(OSError):
        sock.setblocking(False)
    return sock
