"""Make-before-break: the supervisor opens a second link on purpose, bounded in time, one link
delivering at a time. (The policy that decides when, venue limits and de-duplication come with the
pool; this is the mechanism.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from wsclient import (
    Client,
    ClientConfig,
    Closed,
    Connected,
    ConnectionState,
    Disconnected,
    Heartbeat,
    Reconnect,
    StateChanged,
)

from .conftest import Recorder, TestServer, poll_until

pytestmark = pytest.mark.usefixtures("backend")

MakeServer = Callable[..., Awaitable[TestServer]]


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": Heartbeat(interval=0.05, timeout=0.2),
        "reconnect": Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0),
        "open_timeout": 1.0,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


class Ticker:
    """A server that numbers its connections and sends ``c<conn>-<i>`` every few milliseconds."""

    def __init__(self) -> None:
        self.opened: dict[int, float] = {}
        self.closed: dict[int, tuple[float, int | None]] = {}
        self.hellos: list[int] = []

    async def handler(self, server: TestServer, ws: ServerConnection) -> None:
        conn = server.total
        loop = asyncio.get_running_loop()
        self.opened[conn] = loop.time()
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.TaskGroup() as group:
                group.create_task(self._tick(ws, conn))
                async for message in ws:
                    server.received.append(message)
                    if message == "hello":
                        self.hellos.append(conn)
                    server.changed()
        self.closed[conn] = (loop.time(), ws.close_code)
        server.changed()

    async def _tick(self, ws: ServerConnection, conn: int) -> None:
        with contextlib.suppress(ConnectionClosed):
            for i in range(10_000):
                await ws.send(f"c{conn}-{i}")
                await asyncio.sleep(0.005)  # the feed's cadence


async def test_rotation_opens_the_new_link_before_closing_the_old(make_server: MakeServer) -> None:
    ticker = Ticker()
    server = await make_server(ticker.handler)
    client = Client(server.url, config=config())
    client.subscribe("sub")

    @client.on_connect
    async def hello(connection: object) -> None:
        await connection.send("hello")  # type: ignore[attr-defined]

    delivered: list[tuple[str, int]] = []
    recorder = Recorder(client)
    client.on_message(lambda frame: delivered.append((str(frame), len(recorder.of(Connected)))))
    states: list[ConnectionState] = []
    async with client:
        await recorder.wait_for(Connected)
        await poll_until(lambda: len(delivered) >= 5)
        client.on_event(
            lambda event: None if isinstance(event, Closed | StateChanged) else states.append(client.state)
        )
        assert client._supervisor.rotate()
        assert not client._supervisor.rotate(), "one rotation at a time"
        await recorder.wait_for(Connected, 2)
        await server.wait_until(lambda: 1 in ticker.closed)
        count = len(delivered)
        await poll_until(lambda: len(delivered) >= count + 5)
    second = recorder.of(Connected)[1]
    assert isinstance(second, Connected) and second.reconnect and second.connection_id == 2
    assert recorder.of(Disconnected) == [], "a rotation is not a lost connection"
    assert states and all(state is ConnectionState.OPEN for state in states), "OPEN throughout"
    # The new link ran the hooks and the replay before it took over.
    assert ticker.hellos == [1, 2] and server.received.count("sub") == 2
    # Bounded overlap: the old link was closed (1000) soon after the new one opened.
    closed_at, code = ticker.closed[1]
    assert code == 1000
    assert closed_at - ticker.opened[2] < config().open_timeout + config().close_timeout
    assert server.peak == 2
    # One link at a time: nothing of the old link once the new one was announced.
    after = [frame for frame, seen in delivered if seen >= 2]
    assert after and all(frame.startswith("c2-") for frame in after), after[:5]


async def test_a_rotation_that_cannot_open_is_abandoned_in_bounded_time(server: TestServer) -> None:
    client = Client(server.url, config=config())
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Connected)
        server.reject = (503, {})
        started = asyncio.get_running_loop().time()
        assert client._supervisor.rotate(overlap=0.3)
        await server.wait_until(lambda: len(server.handshake_times) >= 2)
        await poll_until(lambda: client._supervisor._rotation is None, timeout=2)
        took = asyncio.get_running_loop().time() - started
        server.reject = None
        assert client.state is ConnectionState.OPEN
    assert took < 0.3 + 0.5
    assert len(recorder.of(Connected)) == 1 and recorder.of(Disconnected) == []
    assert server.peak == 1
