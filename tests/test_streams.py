"""``async for`` over a client's messages and events, against the fake venue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from wsclient import (
    Client,
    ClientConfig,
    Closed,
    Connected,
    ConnectionState,
    Heartbeat,
    Reconnect,
    StateChanged,
    Stream,
)
from wsclient.testing import VenueServer
from wsclient.testing.venue import VenueTrade

CONFIG = ClientConfig(
    discriminator="e",
    heartbeat=Heartbeat(interval=1.0, timeout=1.0),
    reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
)
SUBSCRIBE = {"method": "SUBSCRIBE", "params": ["a@trade", "b@trade"], "id": 1}


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls a counter of another part; bounded
            await asyncio.sleep(0.005)


@pytest.mark.usefixtures("backend")
async def test_async_for_gets_typed_messages_in_order_and_ends_when_the_client_closes() -> None:
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=CONFIG)
        trades = client.messages(VenueTrade)
        raw = client.messages(maxsize=10_000)
        client.subscribe(SUBSCRIBE)
        got: list[tuple[str, int]] = []

        async def read() -> None:
            async for trade in trades:
                got.append((trade.s, trade.t))

        async with client:
            reader = asyncio.create_task(read())
            await until(lambda: len(venue.subscribers("a@trade")) == 1)
            for _ in range(50):
                venue.emit("a@trade")
                venue.emit("b@trade")
            await until(lambda: len(got) == 100)
        await asyncio.wait_for(reader, 5)  # ended by the close, not cancelled
    assert [t for s, t in got if s == "a@trade"] == list(range(1, 51))
    assert [t for s, t in got if s == "b@trade"] == list(range(1, 51))
    frames = [frame async for frame in raw]  # the buffered raw frames, then the end
    assert sum('"trade"' in str(f) for f in frames) == 100
    assert trades.closed and raw.closed


async def test_a_slow_reader_holds_the_client_back_without_losing_anything() -> None:
    async with VenueServer(rate=0, max_buffer=10_000) as venue:
        client = Client(venue.url, config=CONFIG)
        trades = client.messages(VenueTrade, maxsize=4)
        client.subscribe(SUBSCRIBE)
        async with client:
            await until(lambda: len(venue.subscribers("a@trade")) == 1)
            venue.emit("a@trade", 200)
            await until(lambda: client.stats.inbound_queued > 0)
            assert len(trades) <= 5  # the bound (one more: the frame the dispatcher waits with)
            seen = []
            async for trade in trades:
                seen.append(trade.t)
                if len(seen) == 200:
                    break
                await asyncio.sleep(0)  # a slow reader
        assert seen == list(range(1, 201))
        assert trades.dropped == 0


async def test_drop_oldest_keeps_the_newest_and_counts_the_rest() -> None:
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=CONFIG)
        trades = client.messages(VenueTrade, maxsize=10, overflow="drop_oldest")
        client.subscribe(SUBSCRIBE)
        async with client:
            await until(lambda: len(venue.subscribers("a@trade")) == 1)
            venue.emit("a@trade", 100)
            await until(lambda: trades.dropped == 90)
            kept = [(await anext(trades)).t for _ in range(10)]
        assert kept == list(range(91, 101))


async def test_events_include_state_changes_and_end_on_close() -> None:
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=CONFIG)
        events = client.events()
        async with client:
            await client.wait_open(5)
            await venue.restart()
            await until(lambda: client.stats.connects == 2)
        seen = [event async for event in events]
    changes = [(e.old, e.new) for e in seen if isinstance(e, StateChanged)]
    S = ConnectionState
    assert changes[:2] == [(S.IDLE, S.CONNECTING), (S.CONNECTING, S.OPEN)]
    assert (S.OPEN, S.RECONNECTING) in changes
    assert changes[-1][1] is S.CLOSED
    assert isinstance(seen[-1], Closed)  # the last event, emitted after the move to CLOSED
    assert sum(isinstance(e, Connected) for e in seen) == 2
    assert events.dropped == 0


async def test_aclose_unregisters_the_stream() -> None:
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=CONFIG)
        other: list[int] = []
        client.on(VenueTrade, lambda m: other.append(m.t))
        trades = client.messages(VenueTrade)
        client.subscribe(SUBSCRIBE)
        async with client:
            await until(lambda: len(venue.subscribers("a@trade")) == 1)
            venue.emit("a@trade", 3)
            await until(lambda: len(other) == 3)
            async with trades:
                assert [(await anext(trades)).t for _ in range(3)] == [1, 2, 3]
            venue.emit("a@trade", 3)
            await until(lambda: len(other) == 6)
            assert len(trades) == 0 and trades.closed


async def test_a_stream_of_a_closed_client_is_empty_and_bad_arguments_fail() -> None:
    client = Client("ws://127.0.0.1:9/", config=CONFIG)
    await client.close()
    assert [m async for m in client.messages()] == []
    with pytest.raises(ValueError, match="maxsize"):
        Stream(0, "block")
    with pytest.raises(ValueError, match="overflow"):
        client.events(overflow="drop_all")  # type: ignore[arg-type]
