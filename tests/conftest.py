"""Shared fixtures: a small, scriptable `websockets` server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from wsclient import Client, ClientEvent

from .rawpeer import MakeRaw, RawServer, Script


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every selected test N times (hunting a failure that only load shows, with -n)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    repeat = metafunc.config.getoption("repeat")
    if repeat > 1:
        metafunc.fixturenames.append("_repeat")
        metafunc.parametrize("_repeat", range(repeat))


Handler = Callable[["TestServer", ServerConnection], Awaitable[None]]


async def echo_handler(server: TestServer, ws: ServerConnection) -> None:
    async for message in ws:
        server.received.append(message)
        server.changed()
        await ws.send(message)


class TestServer:
    """A `websockets` server whose behaviour each test scripts.

    It records every frame it receives, counts connections (total, current, peak) and can be stopped
    and restarted on the same port.
    """

    __test__ = False

    def __init__(self, handler: Handler = echo_handler) -> None:
        self.handler = handler
        self.port = 0
        self.received: list[str | bytes] = []
        self.total = 0
        self.current = 0
        self.peak = 0
        self.connections: list[ServerConnection] = []
        self.handshake_times: list[float] = []
        self.reject: tuple[int, dict[str, str]] | None = None
        self._server: Server | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def changed(self) -> None:
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Event-driven wait for a condition on the server's records."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshake_times.append(asyncio.get_running_loop().time())
        self.changed()
        if self.reject is not None:
            status, headers = self.reject
            response = connection.respond(status, "rejected\n")
            for k, v in headers.items():
                response.headers[k] = v
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.total += 1
        self.current += 1
        self.peak = max(self.peak, self.current)
        self.connections.append(ws)
        self.changed()
        try:
            await self.handler(self, ws)
        except Exception:
            pass
        finally:
            self.current -= 1
            self.changed()

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            ping_interval=None,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, *, close_code: int = 1001) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for ws in list(self.connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(close_code), 1.0)
            ws.transport.abort()  # a peer that stopped reading never finishes the close handshake
        await self._server.wait_closed()
        self._server = None

    async def drop_all(self) -> None:
        """Abort every connection without a close frame."""
        for ws in list(self.connections):
            ws.transport.abort()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def factory(handler: Handler = echo_handler) -> TestServer:
        server = TestServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    return await make_server()


@pytest.fixture
async def raw_server() -> AsyncIterator[MakeRaw]:
    """Hand-written WebSocket servers (tests/rawpeer.py), each running a script; stopped after."""
    servers: list[RawServer] = []

    async def factory(script: Script) -> RawServer:
        server = RawServer(script)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


async def poll_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Bounded wait on a condition that has no event to wait on (a client counter, say).

    Checks every millisecond and fails with TimeoutError after ``timeout``: never a guess at a delay.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - no event exists for this condition
            await asyncio.sleep(0.001)


class Collector:
    """An on_message callback that records frames and wakes waiters."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, frame: str | bytes) -> None:
        self.frames.append(frame)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[str | bytes]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.frames


#: What wsclient reads for its proxy (``ClientConfig(proxy=None)``, the default), curl's names.
PROXY_VARIABLES = tuple(
    name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())
)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or a CI runner's proxy must not route the suite's 127.0.0.1 connections; the
    proxy tests set the variables they need."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


#: Every transport backend; modules that exercise a connection run each test on all of them with
#: ``pytestmark = pytest.mark.usefixtures("backend")``.
BACKENDS = ("websockets", "picows")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with every ``Client`` on the given transport backend, whatever its config says."""
    from wsclient.transport import get_connector

    name: str = request.param
    connector = get_connector(name)
    monkeypatch.setattr("wsclient.client.get_connector", lambda _name: connector)
    return name


class Recorder:
    """Collects a client's events and lets a test wait for one, event-driven and bounded."""

    def __init__(self, client: Client) -> None:
        self.events: list[ClientEvent] = []
        self._changed = asyncio.Event()
        client.on_event(self._record)

    def _record(self, event: ClientEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type) -> list[ClientEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0) -> list[ClientEvent]:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind)
