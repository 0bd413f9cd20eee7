"""RedisStreamSink against a real redis-server, fed by a Client reading the fake venue.

Every test runs real processes: a :class:`~wsclient.testing.VenueServer` producing sequenced trades
(contiguous ids per stream), a :class:`~wsclient.Client` reading it, and a ``redis-server``
(:class:`~wsclient.testing.redis.RedisServer`, append-only file fsynced before every reply) that a
test pauses (SIGSTOP), kills (SIGKILL) and restarts. What ends up in Redis is read back with
``XRANGE`` and checked id by id.

redis-server comes from ``make peers`` (``tests/peers/install.sh``); without it these tests skip on a
developer's machine and fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from wsclient import Client, ClientConfig, ConnectionState
from wsclient.sinks import RedisStreamSink, SeenIds, SinkClosedError
from wsclient.sinks.redis import read_stream
from wsclient.testing import VenueServer
from wsclient.testing.redis import RedisServer, find_redis_server
from wsclient.testing.venue import VenueTrade

from .conftest import poll_until
from .peers import missing

TIMEOUT = 15.0
FAST = {"reconnect_initial": 0.01, "reconnect_max": 0.1, "connect_timeout": 1.0}


def trade_key(m: VenueTrade) -> str:
    return f"md:trades:{m.s}"


def trade_id(m: VenueTrade) -> str:
    return f"{m.s}:{m.t}"


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        missing("redis-server is not installed", "run `make peers` as root, or apt-get install redis-server")
    async with RedisServer(binary=binary) as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A reader's connection (reconnects by itself after a restart of the server)."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def venue() -> AsyncIterator[VenueServer]:
    # rate=0: trades come only from emit(), so a test knows exactly which ids exist. The outbox is
    # large because a test holds the client back on purpose.
    async with VenueServer(rate=0, max_buffer=100_000) as server:
        yield server


@asynccontextmanager
async def feed(
    venue: VenueServer, streams: list[str], *handlers: Callable[..., Any], **config: Any
) -> AsyncIterator[Client]:
    """A client subscribed to ``streams`` with ``handlers`` on ``VenueTrade``, open and subscribed."""
    client = Client(venue.url, config=ClientConfig(discriminator="e", **config))
    for handler in handlers:
        client.on(VenueTrade, handler)
    client.on_unknown(lambda frame: None)  # the venue's acknowledgements
    client.subscribe({"method": "SUBSCRIBE", "params": streams, "id": 1})
    async with client:
        await venue.wait_until(lambda: all(venue.subscribers(s) for s in streams), TIMEOUT)
        yield client


async def entries(redis: Redis, key: str) -> list[tuple[str, bytes]]:
    """Every entry of stream ``key`` as ``(id field, data field)``, copies included."""
    raw = await redis.xrange(key)
    return [(fields[b"id"].decode(), fields[b"data"]) for _, fields in raw]


def first_appearances(ids: list[str]) -> list[str]:
    seen = SeenIds()
    return [i for i in ids if not seen.seen(i)]


async def test_a_sequenced_feed_lands_complete_and_in_order(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    streams = ["btc@trade", "eth@trade", "sol@trade", "xrp@trade"]
    per_stream = 6000
    frames: dict[str, bytes] = {}

    def record(frame: str | bytes) -> None:
        event = json.loads(frame)
        if event.get("e") == "trade":
            frames[f"{event['s']}:{event['t']}"] = frame.encode() if isinstance(frame, str) else frame

    sink = RedisStreamSink(redis_server.url, stream=trade_key, msg_id=trade_id, **FAST)
    async with sink, feed(venue, streams, sink) as client:
        client.on_message(record)
        for stream in streams:
            venue.emit(stream, per_stream)
        total = per_stream * len(streams)
        await poll_until(lambda: sink.stats.received == total, TIMEOUT)
        assert await sink.flush(TIMEOUT)
    stats = sink.stats
    assert (stats.stored, stats.pending, stats.retries, stats.errors, stats.abandoned) == (total, 0, 0, 0, 0)
    for stream in streams:
        stored = await entries(redis, f"md:trades:{stream}")
        assert [msg_id for msg_id, _ in stored] == [f"{stream}:{t}" for t in range(1, per_stream + 1)]
        # payload="raw": the frame's bytes as the venue sent them, byte for byte.
        assert all(data == frames[msg_id] for msg_id, data in stored)


async def test_json_payloads_validate_back_into_the_model(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    received: list[VenueTrade] = []
    sink = RedisStreamSink(
        redis_server.url, stream=lambda m: f"json:{m.s}", msg_id=trade_id, payload="json", **FAST
    )
    assert not sink.wants_frame
    async with sink, feed(venue, ["btc@trade"], sink, received.append):
        venue.emit("btc@trade", 500)
        await poll_until(lambda: sink.stats.received == 500, TIMEOUT)
        assert await sink.flush(TIMEOUT)
    stored = await entries(redis, "json:btc@trade")
    assert [VenueTrade.model_validate_json(data) for _, data in stored] == received
    assert [t.t for t in received] == list(range(1, 501))


async def test_back_pressure_holds_the_client_while_redis_hangs(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    streams = ["btc@trade", "eth@trade"]
    max_pending, inbound_queue, per_stream = 8, 64, 2000
    sink = RedisStreamSink(
        redis_server.url, stream=trade_key, msg_id=trade_id, max_pending=max_pending, batch=4, **FAST
    )
    peak = 0

    def sample(frame: str | bytes) -> None:
        nonlocal peak
        peak = max(peak, sink.stats.pending)

    try:
        async with sink, feed(venue, streams, sink, inbound_queue=inbound_queue) as client:
            client.on_message(sample)
            redis_server.pause()
            for stream in streams:
                venue.emit(stream, per_stream)
            # Redis answers nothing: the window fills, the handler's awaitable holds the dispatcher,
            # and the frames read meanwhile fill the client's inbound queue.
            await poll_until(lambda: client.stats.inbound_queued >= inbound_queue - 1, TIMEOUT)
            assert sink.stats.pending == max_pending
            waits = sink.stats.waits
            assert waits >= 1
            redis_server.resume()
            total = per_stream * len(streams)
            await poll_until(lambda: sink.stats.received == total, TIMEOUT)
            assert await sink.flush(TIMEOUT)
    finally:
        redis_server.resume()
    stats = sink.stats
    assert stats.waits > waits, "the window kept pushing back after the resume"
    assert peak <= max_pending, f"the window held {peak} entries, more than max_pending={max_pending}"
    assert (stats.stored, stats.timeouts, stats.retries, stats.abandoned) == (total, 0, 0, 0)
    for stream in streams:
        stored = await entries(redis, f"md:trades:{stream}")
        assert [msg_id for msg_id, _ in stored] == [f"{stream}:{t}" for t in range(1, per_stream + 1)]


async def test_a_crash_of_redis_loses_nothing_acknowledged_and_copies_are_dropped(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    streams = ["btc@trade", "eth@trade", "sol@trade"]
    per_stream = 4000
    total = per_stream * len(streams)
    sink = RedisStreamSink(redis_server.url, stream=trade_key, msg_id=trade_id, **FAST)
    async with sink, feed(venue, streams, sink):
        for stream in streams:
            venue.emit(stream, per_stream)
        await poll_until(lambda: sink.stats.stored >= total // 4, TIMEOUT)
        acknowledged = sink.stats.stored
        await redis_server.restart(crash=True)  # SIGKILL, then the same port and append-only file
        await poll_until(lambda: sink.stats.received == total, TIMEOUT)
        assert await sink.flush(TIMEOUT)
    stats = sink.stats
    assert acknowledged < total, "the crash came mid-run"
    assert stats.reconnects >= 1
    assert (stats.stored, stats.pending, stats.abandoned, stats.reordered) == (total, 0, 0, 0)
    copies = 0
    for stream in streams:
        key = f"md:trades:{stream}"
        ids = [msg_id for msg_id, _ in await entries(redis, key)]
        expected = [f"{stream}:{t}" for t in range(1, per_stream + 1)]
        # Every id at least once; the first appearances in the handlers' order.
        assert first_appearances(ids) == expected
        copies += len(ids) - per_stream
        # What a consumer reads once SeenIds dropped the copies: each id once, in order.
        read = [msg_id.decode() async for _, msg_id, _ in read_stream(redis, key, count=500)]
        assert read == expected
    assert copies <= stats.retries, "copies come only from entries sent again"


async def test_close_waits_for_everything_handed_to_the_sink(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    sink = RedisStreamSink(redis_server.url, stream=trade_key, msg_id=trade_id, **FAST)
    try:
        async with feed(venue, ["btc@trade"], sink):
            await sink.start(TIMEOUT)
            redis_server.pause()
            venue.emit("btc@trade", 2000)
            await poll_until(lambda: sink.stats.received == 2000, TIMEOUT)
        # The client is closed; the sink holds all 2000 and Redis answers nothing yet.
        assert sink.stats.pending == 2000
        closing = asyncio.create_task(sink.close(timeout=TIMEOUT))
        await asyncio.sleep(0)
        assert not closing.done()
        redis_server.resume()
        await closing
    finally:
        redis_server.resume()
    assert (sink.stats.stored, sink.stats.pending, sink.stats.abandoned) == (2000, 0, 0)
    assert not sink.stats.connected
    stored = await entries(redis, "md:trades:btc@trade")
    assert [msg_id for msg_id, _ in stored] == [f"btc@trade:{t}" for t in range(1, 2001)]


async def test_close_with_redis_down_abandons_and_later_messages_are_handler_errors(
    venue: VenueServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RedisStreamSink(redis_server.url, stream=trade_key, msg_id=trade_id, **FAST)
    after: list[VenueTrade] = []
    errors: list[tuple[object, BaseException]] = []
    async with feed(venue, ["btc@trade"], sink, after.append) as client:
        client.on_error(lambda item, exc: errors.append((item, exc)))
        await sink.start(TIMEOUT)
        await redis_server.kill()
        venue.emit("btc@trade", 5)
        await poll_until(lambda: len(after) == 5, TIMEOUT)
        with caplog.at_level(logging.ERROR, logger="wsclient.sinks"):
            await sink.close(timeout=0.2)
        assert sink.stats.abandoned == 5 and sink.stats.pending == 0
        assert any("5 message(s) unacknowledged" in r.getMessage() for r in caplog.records)

        venue.emit("btc@trade", 3)
        await poll_until(lambda: len(after) == 8, TIMEOUT)
        assert client.state is ConnectionState.OPEN
    assert [t.t for t in after] == list(range(1, 9))
    assert [type(exc) for _, exc in errors] == [SinkClosedError] * 3
    assert [item.t for item, _ in errors] == [6, 7, 8]  # type: ignore[attr-defined]
    assert sink.stats.received == 5


async def test_a_refused_xadd_is_sent_again_until_redis_takes_it(
    venue: VenueServer, redis_server: RedisServer, redis: Redis
) -> None:
    # A string where the stream should be: Redis answers WRONGTYPE to every XADD of that key.
    await redis.set("md:trades:btc@trade", "not a stream")
    sink = RedisStreamSink(redis_server.url, stream=trade_key, msg_id=trade_id, **FAST)
    async with sink, feed(venue, ["btc@trade", "eth@trade"], sink):
        venue.emit("btc@trade", 3)
        venue.emit("eth@trade", 3)
        await poll_until(lambda: sink.stats.errors >= 2, TIMEOUT)
        assert sink.stats.pending >= 3, "the refused entries wait in the window"
        await redis.delete("md:trades:btc@trade")
        assert await sink.flush(TIMEOUT)
    stats = sink.stats
    assert (stats.stored, stats.pending, stats.reconnects) == (6, 0, 0)
    assert stats.retries >= stats.errors >= 2
    for stream in ("btc@trade", "eth@trade"):
        ids = [msg_id for msg_id, _ in await entries(redis, f"md:trades:{stream}")]
        assert ids == [f"{stream}:{t}" for t in (1, 2, 3)]


async def test_an_idle_sink_notices_a_lost_server_and_comes_back(redis_server: RedisServer) -> None:
    sink = RedisStreamSink(
        redis_server.url, stream=lambda m: "k", msg_id=str, payload=lambda m: b"x", ping_interval=0.05, **FAST
    )
    async with sink:
        await redis_server.kill()
        await poll_until(lambda: not sink.stats.connected, TIMEOUT)
        await redis_server.start()
        await poll_until(lambda: sink.stats.connected, TIMEOUT)
        assert sink.stats.reconnects == 1
        assert sink(1) is None
        assert await sink.flush(TIMEOUT)
    assert sink.stats.stored == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_pending": 0}, "max_pending"),
        ({"batch": 0}, "batch"),
        ({"batch": 2.5}, "batch"),
        ({"maxlen": 0}, "maxlen"),
        ({"ack_timeout": 0}, "ack_timeout"),
        ({"reconnect_initial": -1}, "reconnect_initial"),
        ({"reconnect_initial": 1.0, "reconnect_max": 0.5}, "reconnect_max"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"payload": "xml"}, "payload"),
        ({"url": "http://127.0.0.1:6379"}, "url"),
    ],
)
def test_bad_config_fails_at_construction_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {"stream": trade_key, "msg_id": trade_id, **kwargs}
    with pytest.raises(ValueError, match=field):
        RedisStreamSink(**options)


def test_functions_must_be_callable() -> None:
    with pytest.raises(TypeError, match="stream"):
        RedisStreamSink(stream="md:trades", msg_id=trade_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="msg_id"):
        RedisStreamSink(stream=trade_key, msg_id="t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"msg_id": lambda m: m}, "msg_id"),
        ({"stream": lambda m: b"k"}, "stream"),
        ({"payload": lambda m: "text"}, "payload"),
    ],
)
def test_a_key_id_or_payload_of_the_wrong_type_is_a_handler_error(kwargs: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {"stream": lambda m: "k", "msg_id": str, "payload": lambda m: b"x", **kwargs}
    sink = RedisStreamSink(**options)
    with pytest.raises(TypeError, match=field):
        sink(1)
    assert sink.stats.received == 0


def test_a_password_in_the_url_stays_out_of_the_repr() -> None:
    sink = RedisStreamSink("redis://feeder:hunter2@127.0.0.1:6379/0", stream=trade_key, msg_id=trade_id)
    assert "hunter2" not in repr(sink)


def test_seen_ids_is_bounded_and_drops_copies() -> None:
    seen = SeenIds(capacity=3)
    assert [seen.seen(i) for i in ["a", "b", "a", "c", "d"]] == [False, False, True, False, False]
    assert len(seen) == 3 and "a" not in seen and seen.dropped == 1
    assert seen.seen("d") and not seen.seen("a")  # "a" was forgotten: bounded, not exact
    with pytest.raises(ValueError, match="capacity"):
        SeenIds(capacity=0)
