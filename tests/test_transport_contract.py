"""The part of the transport contract the hot path relies on, checked on every backend.

``Transport.pump(sink, meter)`` counts each message in the meter before the sink sees it, stamps
``meter.last_inbound`` for reads that carry messages (a pong alone is not inbound traffic), and
delivers straight to ``sink.inline`` while it is set, handing back what it returns through
``sink.defer`` without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from wsclient.transport import ConnectOptions, Meter, Transport, get_connector
from wsclient.transport.base import Data

from .conftest import BACKENDS, Collector, TestServer


@pytest.fixture(params=BACKENDS)
async def transport(request: pytest.FixtureRequest, server: TestServer) -> AsyncIterator[Transport]:
    connect = get_connector(request.param)
    opened = await connect(ConnectOptions(url=server.url, open_timeout=2.0, close_timeout=0.5))
    try:
        yield opened
    finally:
        opened.abort()


async def run_pump(transport: Transport, sink: Any, meter: Meter | None = None) -> asyncio.Task[Any]:
    return asyncio.create_task(transport.pump(sink, meter))


async def stop(pump: asyncio.Task[Any]) -> None:
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)


async def test_the_meter_counts_messages_and_a_pong_alone_does_not_stamp(transport: Transport) -> None:
    meter = Meter()
    got = Collector()
    pump = await run_pump(transport, got, meter)
    try:
        before = time.monotonic()
        await transport.send("héllo")  # the server echoes each message
        await transport.send(b"\x00\x01\x02")
        assert await got.wait_for(2) == ["héllo", b"\x00\x01\x02"]
        assert meter.frames_in == 2
        assert meter.bytes_in == len("héllo") + 3  # len() of the payload: characters of text
        assert before <= meter.last_inbound <= time.monotonic()

        stamped = meter.last_inbound
        rtt = await (await transport.ping(b"contract"))
        assert rtt >= 0
        # The silence watchdog must still see a feed that only answers pings as silent.
        assert (meter.frames_in, meter.last_inbound) == (2, stamped)

        await transport.send("again")
        await got.wait_for(3)
        assert meter.frames_in == 3
        assert meter.last_inbound > stamped
    finally:
        await stop(pump)


class InlineSink:
    """A Sink whose inline target records what the pump hands it directly."""

    def __init__(self) -> None:
        self.inline: InlineSink | None = self
        self.direct: list[Data] = []
        self.called: list[Data] = []
        self.deferred: list[asyncio.Future[None]] = []
        self.changed = asyncio.Event()

    def dispatch(self, data: Data) -> asyncio.Future[None] | None:
        self.direct.append(data)
        self.changed.set()
        if data == "slow":
            return asyncio.get_running_loop().create_future()  # never done: the pump must not wait
        return None

    def __call__(self, data: Data) -> None:
        self.called.append(data)
        self.changed.set()

    def defer(self, pending: asyncio.Future[None]) -> None:
        self.deferred.append(pending)

    async def wait_for(self, total: int) -> None:
        async with asyncio.timeout(5):
            while len(self.direct) + len(self.called) < total:
                self.changed.clear()
                await self.changed.wait()


async def test_the_pump_delivers_to_the_inline_target_and_never_waits_on_what_it_returns(
    transport: Transport,
) -> None:
    sink = InlineSink()
    meter = Meter()
    pump = await run_pump(transport, sink, meter)
    try:
        for text in ("a", "slow", "b"):
            await transport.send(text)
        await sink.wait_for(3)
        assert sink.direct == ["a", "slow", "b"]  # "b" came although "slow" is still pending
        assert sink.called == []
        assert len(sink.deferred) == 1 and not sink.deferred[0].done()

        sink.inline = None  # the receiver switched the shortcut off: the sink itself is called
        await transport.send("c")
        await sink.wait_for(4)
        assert sink.called == ["c"]
        assert meter.frames_in == 4
    finally:
        await stop(pump)
