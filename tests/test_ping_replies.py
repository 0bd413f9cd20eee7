"""Venue application pings answered as they are read: ahead of a slow handler, before OPEN too."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve

from wsclient import Client, ClientConfig, GzipJsonCodec, Heartbeat, PingReply
from wsclient.transport.memory import MemoryServer

HTX = PingReply(
    match=lambda frame: isinstance(frame, dict) and "ping" in frame,
    reply=lambda frame: {"pong": frame["ping"]},
    hint='"ping"',
)


def config(**kwargs: Any) -> ClientConfig:
    return ClientConfig(heartbeat=Heartbeat(mode="off"), ping_replies=(HTX,), **kwargs)


@pytest.mark.looptime
async def test_a_ping_behind_a_slow_handler_is_answered_at_once_and_not_delivered() -> None:
    server = MemoryServer()
    client = Client("ws://venue.test/ws", config=config(), connector=server.connect)
    seen: list[str] = []

    async def slow(frame: str | bytes) -> None:
        seen.append(str(frame))
        await asyncio.sleep(30)  # a handler stuck on the first frame: everything queues behind it

    client.on_message(slow)
    async with client:
        await client.wait_open(5)
        conn = server.connections[0]
        conn.send("first")
        await asyncio.sleep(1)
        sent_at = asyncio.get_running_loop().time()
        conn.send('{"ping": 1700000000123}')
        await conn.wait_received(1, timeout=5)
        answered_at = conn.received_at[0]
        stats = client.stats
    assert conn.received == ['{"pong":1700000000123}']
    assert answered_at - sent_at < 0.01, "answered as read, not after the 30 s handler"
    assert seen == ["first"], "the ping is not delivered"
    assert stats.ping_replies == 1


@pytest.mark.looptime
async def test_a_ping_during_the_on_connect_hooks_is_answered_before_open() -> None:
    server = MemoryServer()
    client = Client("ws://venue.test/ws", config=config(), connector=server.connect)
    hook_done: list[float] = []

    @client.on_connect
    async def login(connection: object) -> None:
        conn = server.connections[-1]
        conn.send('{"ping": 42}')
        await asyncio.sleep(5)  # a slow login: the venue pings meanwhile
        hook_done.append(asyncio.get_running_loop().time())

    async with client:
        await client.wait_open(10)
        conn = server.connections[0]
    assert conn.received == ['{"pong":42}']
    assert conn.received_at[0] < hook_done[0] - 4, "not parked in the outbox until OPEN"


@pytest.mark.parametrize("backend", ["websockets", "picows"])
async def test_real_venue_pings_are_answered_while_a_handler_blocks(backend: str) -> None:
    pongs: list[Any] = []
    late: list[int] = []

    async def venue(ws: ServerConnection) -> None:
        await ws.send("slow")  # the client's handler sits on this one
        for n in range(3):
            await ws.send(json.dumps({"ping": n}))
            try:
                async with asyncio.timeout(0.5):  # venues drop a client after a few missed pings
                    pongs.append(json.loads(await ws.recv()))
            except TimeoutError:
                late.append(n)
        await ws.close()

    async with serve(venue, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/", config=config(transport=backend))
        seen: list[str | bytes] = []
        handled = asyncio.Event()

        async def slow(frame: str | bytes) -> None:
            seen.append(frame)
            if frame == "slow":
                await asyncio.sleep(3)
            handled.set()

        client.on_message(slow)
        async with client:
            async with asyncio.timeout(5):
                while len(pongs) + len(late) < 3:  # noqa: ASYNC110 - the venue's record; bounded
                    await asyncio.sleep(0.01)
            stats = client.stats
    assert late == [] and pongs == [{"pong": 0}, {"pong": 1}, {"pong": 2}]
    assert seen == ["slow"]
    assert stats.ping_replies == 3


@pytest.mark.looptime
async def test_compressed_pings_and_deliver_true() -> None:
    server = MemoryServer()
    rule = PingReply(
        match=lambda frame: isinstance(frame, dict) and "ping" in frame,
        reply=lambda frame: {"pong": frame["ping"]},
        deliver=True,
    )
    client = Client(
        "ws://venue.test/ws",
        config=ClientConfig(heartbeat=Heartbeat(mode="off"), codec=GzipJsonCodec(), ping_replies=(rule,)),
        connector=server.connect,
    )
    seen: list[str | bytes] = []
    client.on_message(seen.append)
    async with client:
        await client.wait_open(5)
        conn = server.connections[0]
        conn.send(gzip.compress(b'{"ping": 7}'))
        await conn.wait_received(1, timeout=5)
        await asyncio.sleep(0.1)
    assert conn.received == ['{"pong":7}']
    assert len(seen) == 1 and gzip.decompress(seen[0]) == b'{"ping": 7}'  # type: ignore[arg-type]


def test_a_rule_that_is_not_a_function_fails_at_construction() -> None:
    with pytest.raises(ValidationError, match="match"):
        PingReply(match="ping", reply=lambda frame: frame)  # type: ignore[arg-type]
