"""An HTTP ``CONNECT`` proxy in the event loop, for tests of code that goes through a proxy.

:class:`HttpConnectProxy` is a forward proxy on 127.0.0.1: it answers ``CONNECT host:port`` by
connecting there (loopback targets only) and relaying bytes both ways. It can ask for Basic
credentials (407 without them), refuse the next tunnels with a scripted status (a 503 with
``Retry-After``, a 403…), drop every open tunnel, and it records what it was asked::

    async with FeedServer() as feed, HttpConnectProxy(auth=("alice", "s3cret")) as proxy:
        client = Client(feed.url, config=ClientConfig(proxy=proxy.url))
        ...
        proxy.refuse(503, {"Retry-After": "1"}, times=2)
        await proxy.drop_tunnels()      # the client reconnects, through the two 503s

It is a test double, not a proxy to deploy: no ``GET`` forwarding, no access control beyond the
credentials, and it refuses every target that is not a loopback address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote

__all__ = ["ConnectRequest", "HttpConnectProxy"]

_REASONS = {
    200: "Connection established",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """One ``CONNECT`` the proxy received."""

    target: str
    """``host:port`` as asked."""
    headers: dict[str, str]
    """Its headers, names in lower case."""
    status: int
    """What the proxy answered (200: the tunnel was opened)."""


class HttpConnectProxy:
    """A scriptable HTTP ``CONNECT`` proxy on 127.0.0.1 (see the module's documentation).

    ``auth=(user, password)`` makes it answer 407 to a ``CONNECT`` without those Basic credentials.
    ``port=0`` takes a free port; :meth:`restart` reopens the same one.
    """

    def __init__(self, *, auth: tuple[str, str] | None = None, port: int = 0) -> None:
        self._auth = auth
        self._port = port
        self._server: asyncio.Server | None = None
        self._refusals: list[tuple[int, dict[str, str]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests: list[ConnectRequest] = []
        """Every ``CONNECT`` received, in order."""

    # -- life ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (on the port given, or a free one)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every tunnel. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.drop_tunnels()
        if server is not None:
            await server.wait_closed()

    async def restart(self) -> None:
        """Stop, then listen again on the same port (a proxy that crashed and came back)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> HttpConnectProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what a test reads and scripts ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://[user:password@]127.0.0.1:port``, the value for ``ClientConfig(proxy=...)``."""
        userinfo = ""
        if self._auth is not None:
            userinfo = f"{quote(self._auth[0], safe='')}:{quote(self._auth[1], safe='')}@"
        return f"http://{userinfo}127.0.0.1:{self._port}"

    @property
    def tunnels(self) -> int:
        """Tunnels opened so far."""
        return sum(1 for r in self.requests if r.status == 200)

    def refuse(self, status: int, headers: Mapping[str, str] | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` ``CONNECT`` requests with ``status`` (and ``headers``)."""
        self._refusals.extend([(status, dict(headers or {}))] * times)

    async def drop_tunnels(self) -> None:
        """Cut every open tunnel at once, with no goodbye (a proxy that died)."""
        for writer in list(self._writers):
            writer.transport.abort()
        # Not cancelled: an aborted socket ends each handler by itself (and asyncio 3.11's stream
        # server logs a cancelled handler as an error).
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the proxy -----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, _, rest = request_line.partition(" ")
            target = rest.partition(" ")[0]
            headers = {
                name.strip().lower(): value.strip()
                for name, sep, value in (line.partition(":") for line in lines)
                if sep
            }
            status, extra = self._verdict(method, target, headers)
            if status == 200:
                host, _, port = target.rpartition(":")
                try:
                    up_reader, upstream = await asyncio.open_connection(host.strip("[]"), int(port))
                except OSError:
                    status = 502
            self.requests.append(ConnectRequest(target, headers, status))
            reason = _REASONS.get(status, "Refused")
            lines_out = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in extra.items())]
            if status != 200:
                lines_out += ["Content-Length: 0", "Connection: close"]
            writer.write(("\r\n".join(lines_out) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            if status != 200 or upstream is None:
                return
            self._writers.add(upstream)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    def _verdict(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        if method != "CONNECT":
            return 405, {}
        if self._auth is not None:
            expected = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            if headers.get("proxy-authorization") != f"Basic {expected}":
                return 407, {"Proxy-Authenticate": 'Basic realm="wsclient.testing"'}
        if self._refusals:
            return self._refusals.pop(0)
        host = target.rpartition(":")[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        return (200, {}) if loopback else (403, {})


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
