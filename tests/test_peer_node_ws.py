"""wsclient against a Node `ws` server: another implementation's pings and close codes.

The server (tests/peers/ws_server.js) runs ws's documented heartbeat: it pings every 50 ms and
terminates a connection that did not pong since the previous round. It closes with whatever code a
client's ``{"cmd": "close"}`` asks for, and reports on stdout what it saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from wsclient import (
    Client,
    ClientConfig,
    Connected,
    ConnectionState,
    Disconnected,
    GaveUpError,
    Heartbeat,
    Reconnect,
    TransportClosed,
)

from .conftest import Recorder
from .peers import PEERS_DIR, missing, require_binary, stop_process

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

PING_INTERVAL_MS = 50
FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)
SUBSCRIBE = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
SUBSCRIBE_TEXT = json.dumps(SUBSCRIBE, separators=(",", ":"))


class NodeWsServer:
    """The running ``ws_server.js``: its port and the events it printed, with an event-driven wait."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.port = 0
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async for line in stdout:
                self.events.append(json.loads(line))
                self._changed.set()
        finally:
            self._changed.set()

    def of(self, kind: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind and (conn is None or e.get("conn") == conn)]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._reader is not None and self._reader.done():
                    raise RuntimeError(
                        f"ws_server.js stopped reporting; exit status {self.process.returncode}"
                    )
                self._changed.clear()
                await self._changed.wait()

    def subscribes(self) -> list[int]:
        """The connections on which the subscription arrived, in order."""
        return [e["conn"] for e in self.of("message") if e.get("data") == SUBSCRIBE_TEXT]


@pytest.fixture
async def node_ws(tmp_path: Path) -> AsyncIterator[NodeWsServer]:
    node = require_binary("node", why="install Node.js (CI machines have node 20 and npm)")
    if not (PEERS_DIR / "node_modules" / "ws" / "package.json").exists():
        missing("the npm package ws is not installed in tests/peers", "run `make peers` (npm ci)")
    with (tmp_path / "ws_server.err").open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            node,
            str(PEERS_DIR / "ws_server.js"),
            "--ping-interval",
            str(PING_INTERVAL_MS),
            cwd=PEERS_DIR,
            # The server exits when this pipe closes, even if the test process dies without stopping it.
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    server = NodeWsServer(process)
    server.start_reading()
    try:
        try:
            await server.wait_until(lambda: bool(server.of("listening")), timeout=15)
        except (TimeoutError, RuntimeError):
            pytest.fail(f"ws_server.js did not start:\n{(tmp_path / 'ws_server.err').read_text()}")
        server.port = server.of("listening")[0]["port"]
        yield server
    finally:
        await stop_process(process)
        await server.stop_reading()
        if process.stdin is not None:
            process.stdin.close()


def config(**overrides: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "heartbeat": Heartbeat(interval=0.2, timeout=0.5),
        "reconnect": FAST,
        "open_timeout": 3.0,
        "close_timeout": 0.5,
    }
    values.update(overrides)
    return ClientConfig(**values)


async def test_client_answers_server_pings_round_after_round(node_ws: NodeWsServer) -> None:
    client = Client(node_ws.url, config=config())
    recorder = Recorder(client)
    async with client:
        await client.wait_open(5)
        # ws terminates a connection one round after a ping it did not answer: 12 rounds answered is
        # 12 verdicts passed (at 50 ms, about 0.6 s; the bound is for a loaded machine).
        await node_ws.wait_until(lambda: len(node_ws.of("pong", conn=1)) >= 12, timeout=10)
        reply = await client.request({"cmd": "stats"}, timeout=3)
        await client.send({"op": "echo", "n": 1})
        stats = client.stats
    assert reply["type"] == "stats" and reply["conn"] == 1
    assert reply["pongs"] >= 12
    # At most the ping of the round in progress is still unanswered.
    assert reply["pings"] - reply["pongs"] <= 1
    assert not node_ws.of("terminate")
    assert not recorder.of(Disconnected)
    assert stats.connects == 1
    assert len(node_ws.of("connection")) == 1


async def test_a_peer_that_does_not_pong_is_terminated(node_ws: NodeWsServer) -> None:
    # The control for the test above: a client that completes the handshake, then never reads (so
    # never pongs), is cut by the server within a couple of rounds.
    reader, writer = await asyncio.open_connection("127.0.0.1", node_ws.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /stream HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{node_ws.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        await node_ws.wait_until(lambda: bool(node_ws.of("terminate", conn=1)), timeout=5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    (terminated,) = node_ws.of("terminate", conn=1)
    assert terminated["pongs"] == 0 and terminated["pings"] >= 1


@pytest.mark.parametrize("code", [1001, 1011, 4000])
async def test_server_close_is_retried_and_subscriptions_replayed(node_ws: NodeWsServer, code: int) -> None:
    client = Client(node_ws.url, config=config())
    client.subscribe(SUBSCRIBE)
    recorder = Recorder(client)
    async with client:
        await client.wait_open(5)
        await node_ws.wait_until(lambda: node_ws.subscribes() == [1])
        await client.send({"cmd": "close", "code": code, "reason": "bye"})
        await recorder.wait_for(Connected, 2)
        await node_ws.wait_until(lambda: node_ws.subscribes() == [1, 2])
        assert client.state is ConnectionState.OPEN
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.will_retry) == (code, True)
    assert lost.reason == f"connection closed with code {code} (bye)"
    assert [e["code"] for e in node_ws.of("close", conn=1)] == [code]
    assert len(node_ws.of("connection")) == 2


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        pytest.param(1008, FAST, id="1008-fatal-by-default"),
        pytest.param(
            4000,
            Reconnect(
                initial_delay=0.01,
                max_delay=0.05,
                jitter=0,
                fatal_close_codes=Reconnect().fatal_close_codes | {4000},
            ),
            id="4000-made-fatal",
        ),
    ],
)
async def test_fatal_server_close_ends_in_failed(
    node_ws: NodeWsServer, code: int, reconnect: Reconnect
) -> None:
    client = Client(node_ws.url, config=config(reconnect=reconnect))
    client.subscribe(SUBSCRIBE)
    recorder = Recorder(client)
    await client.start()
    try:
        await client.wait_open(5)
        await client.send({"cmd": "close", "code": code, "reason": "policy"})
        with pytest.raises(GaveUpError) as info:
            async with asyncio.timeout(5):
                await client.wait_closed()
    finally:
        await client.close()
    assert client.state is ConnectionState.FAILED
    assert info.value.fatal
    assert isinstance(info.value.cause, TransportClosed) and info.value.cause.code == code
    lost = recorder.of(Disconnected)
    assert len(lost) == 1 and isinstance(lost[0], Disconnected)
    assert (lost[0].code, lost[0].will_retry) == (code, False)
    assert len(node_ws.of("connection")) == 1 and node_ws.subscribes() == [1]
