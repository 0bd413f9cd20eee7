"""Typed routing, request/response and sequence gaps, round-tripped through a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection

from wsclient import (
    Client,
    ClientConfig,
    ConnectionLostError,
    Heartbeat,
    Message,
    Reconnect,
    RequestTimeout,
    SequenceGap,
)

from .conftest import TestServer, poll_until

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

MakeServer = Callable[..., Awaitable[TestServer]]


def config(**overrides: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "heartbeat": Heartbeat(interval=0.5, timeout=0.5),
        "reconnect": Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0),
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)


class Trade(Message):
    e: Literal["trade"]
    s: str
    p: Decimal
    seq: int


class Depth(Message):
    e: Literal["depthUpdate"]
    s: str
    bids: list[tuple[Decimal, Decimal]]
    seq: int


class Ticker(Message):
    e: Literal["24hrTicker"]
    s: str
    c: Decimal


def frame(**fields: Any) -> str:
    return json.dumps(fields)


async def test_mixed_stream_under_custom_discriminator_in_order(server: TestServer) -> None:
    client = Client(server.url, config=config(discriminator="e"))
    seen: list[tuple[str, Any]] = []
    done = asyncio.Event()

    @client.on(Trade)
    def on_trade(msg: Trade) -> None:
        seen.append(("trade", msg.seq))

    @client.on(Depth)
    async def on_depth(msg: Depth) -> None:
        await asyncio.sleep(0)  # an async handler in the middle must not reorder anything
        seen.append(("depth", msg.seq))

    @client.on(Ticker)
    def on_ticker(msg: Ticker) -> None:
        seen.append(("ticker", msg.c))
        if msg.c == Decimal("99"):
            done.set()

    frames = []
    for i in range(30):
        frames.append(frame(e="trade", s="BTC", p="1.5", seq=i))
        frames.append(frame(e="depthUpdate", s="BTC", bids=[["1.0", "2"]], seq=i))
    frames.append(frame(e="24hrTicker", s="BTC", c="99"))
    async with client:
        await client.wait_open(2)
        for f in frames:
            await client.send(f)  # the echo server sends each frame back
        async with asyncio.timeout(5):
            await done.wait()
    expected: list[tuple[str, Any]] = []
    for i in range(30):
        expected += [("trade", i), ("depth", i)]
    expected.append(("ticker", Decimal("99")))
    assert seen == expected
    assert isinstance(seen[-1][1], Decimal)
    stats = client.stats
    assert (stats.unknown_messages, stats.invalid_messages, stats.handler_errors) == (0, 0, 0)


async def test_unknown_and_invalid_reach_their_hooks_and_the_stream_goes_on(server: TestServer) -> None:
    client = Client(server.url, config=config(discriminator="e"))
    trades: list[int] = []
    unknown: list[str | bytes] = []
    errors: list[tuple[object, BaseException]] = []
    client.on(Trade, lambda m: trades.append(m.seq))
    client.on_unknown(unknown.append)
    client.on_error(lambda item, exc: errors.append((item, exc)))
    sent = [
        frame(e="trade", s="X", p="1", seq=1),
        frame(e="liquidation", s="X"),  # a tag no model claims
        frame(e="trade", s="X", p="not-a-price", seq=2),  # claimed by Trade, invalid
        "not json at all",
        frame(e="trade", s="X", p="2", seq=3),
    ]
    async with client:
        await client.wait_open(2)
        for f in sent:
            await client.send(f)
        await poll_until(lambda: len(trades) == 2)
    assert trades == [1, 3]
    assert unknown == [sent[1]]
    assert [item for item, _ in errors] == [sent[2], sent[3]]
    assert isinstance(errors[0][1], ValidationError)
    stats = client.stats
    assert stats.unknown_messages == 1 and stats.invalid_messages == 2
    assert stats.connects == 1


async def test_raising_handler_is_isolated(server: TestServer) -> None:
    client = Client(server.url, config=config(discriminator="e"))
    first: list[int] = []
    second: list[int] = []
    errors: list[tuple[object, BaseException]] = []
    client.on_error(lambda item, exc: errors.append((item, exc)))

    @client.on(Trade)
    def flaky(msg: Trade) -> None:
        first.append(msg.seq)
        if msg.seq == 1:
            raise RuntimeError("handler bug")

    @client.on(Trade)
    def steady(msg: Trade) -> None:
        second.append(msg.seq)

    async with client:
        await client.wait_open(2)
        for i in range(3):
            await client.send(frame(e="trade", s="X", p="1", seq=i))
        await poll_until(lambda: len(second) == 3)
    assert first == [0, 1, 2] and second == [0, 1, 2]
    assert len(errors) == 1
    item, exc = errors[0]
    assert isinstance(item, Trade) and item.seq == 1 and str(exc) == "handler bug"
    assert client.stats.handler_errors == 1


async def test_unregister(server: TestServer) -> None:
    client = Client(server.url, config=config(discriminator="e"))
    got: list[int] = []
    registration = client.on(Trade, lambda m: got.append(m.seq))
    unknown: list[str | bytes] = []
    client.on_unknown(unknown.append)
    async with client:
        await client.wait_open(2)
        await client.send(frame(e="trade", s="X", p="1", seq=1))
        await poll_until(lambda: got == [1])
        registration.cancel()
        await client.send(frame(e="trade", s="X", p="1", seq=2))
        await poll_until(lambda: len(unknown) == 1)
    assert got == [1]


async def replier(server: TestServer, ws: ServerConnection) -> None:
    """Answers {"op": "time", "id": n} after the next request arrives, so replies come out of order.

    {"op": "never"} gets no reply; {"op": "drop"} drops the connection.
    """
    held: list[int] = []
    async for raw in ws:
        server.received.append(raw)
        server.changed()
        msg = json.loads(raw)
        if msg.get("op") == "drop":
            ws.transport.abort()
            return
        if msg.get("op") == "time":
            held.append(msg["id"])
            if len(held) == 3:
                for request_id in reversed(held):
                    await ws.send(json.dumps({"id": request_id, "result": {"ts": request_id * 10}}))
                held.clear()


class TimeReply(Message):
    id: int
    result: dict[str, int]


async def test_concurrent_requests_are_matched(make_server: MakeServer) -> None:
    server = await make_server(replier)
    client = Client(server.url, config=config())
    handled: list[Any] = []
    client.on_message(lambda f: handled.append(f) if '"result"' in f else None)
    async with client:
        await client.wait_open(2)
        replies = await asyncio.gather(
            client.request({"op": "time"}, timeout=5),
            client.request({"op": "time"}, timeout=5, model=TimeReply),
            client.request({"op": "time", "id": 777}, timeout=5),
        )
    sent_ids = [json.loads(r)["id"] for r in server.received]
    assert sorted(sent_ids[:2]) == sent_ids[:2] and sent_ids[2] == 777
    first, second, third = replies
    assert first == {"id": sent_ids[0], "result": {"ts": sent_ids[0] * 10}}
    assert isinstance(second, TimeReply) and second.result == {"ts": sent_ids[1] * 10}
    assert third["id"] == 777
    assert client.stats.requests_pending == 0


async def test_request_timeout_forgets_the_id(make_server: MakeServer) -> None:
    server = await make_server(replier)
    client = Client(server.url, config=config())
    async with client:
        await client.wait_open(2)
        with pytest.raises(RequestTimeout, match=r"within 0\.05s"):
            await client.request({"op": "never"}, timeout=0.05)
        assert client.stats.requests_pending == 0
        with pytest.raises(TimeoutError):  # RequestTimeout is a TimeoutError
            await client.request({"op": "never"}, timeout=0.01)


async def test_requests_fail_at_once_on_disconnect(make_server: MakeServer) -> None:
    server = await make_server(replier)
    client = Client(server.url, config=config())
    async with client:
        await client.wait_open(2)
        waiting = asyncio.gather(
            client.request({"op": "time"}, timeout=30),
            client.request({"op": "time"}, timeout=30),
            return_exceptions=True,
        )
        await server.wait_until(lambda: len(server.received) == 2)
        await client.send({"op": "drop"})
        async with asyncio.timeout(5):  # far below the requests' own 30 s timeout
            results = await waiting
    assert all(isinstance(r, ConnectionLostError) for r in results), results


async def test_pending_request_fails_on_close(make_server: MakeServer) -> None:
    server = await make_server(replier)
    client = Client(server.url, config=config())
    await client.start()
    await client.wait_open(2)
    pending = asyncio.create_task(client.request({"op": "never"}, timeout=30))
    await server.wait_until(lambda: len(server.received) == 1)
    await client.close()
    with pytest.raises(Exception, match="client closed"):
        await pending


class SeqTrade(Message):
    type: Literal["trade"]
    symbol: str
    seq: int


async def streamer(server: TestServer, ws: ServerConnection) -> None:
    """Sends the seq numbers the client asks for: {"seqs": [...]}."""
    async for raw in ws:
        server.received.append(raw)
        server.changed()
        for n in json.loads(raw)["seqs"]:
            await ws.send(json.dumps({"type": "trade", "symbol": "BTC", "seq": n}))


async def test_gaps_and_resets(make_server: MakeServer) -> None:
    server = await make_server(streamer)
    client = Client(server.url, config=config())
    got: list[int] = []
    gaps: list[SequenceGap] = []
    client.on(SeqTrade, lambda m: got.append(m.seq), seq_key=lambda m: (m.symbol, m.seq))
    client.on_gap(gaps.append)
    async with client:
        await client.wait_open(2)
        await client.send({"seqs": [1, 2, 3, 4, 5]})
        await poll_until(lambda: len(got) == 5)
        assert gaps == []  # contiguous: nothing reported
        await client.send({"seqs": [6, 9, 10, 1, 2]})
        await poll_until(lambda: len(got) == 10)
        # The next stream segment arrives on a new connection, after messages were missed.
        await server.drop_all()
        await client.wait_state(lambda s: s.value == "reconnecting", 2)
        await client.wait_open(2)
        await client.send({"seqs": [7, 8]})
        await poll_until(lambda: len(got) == 12)
    assert gaps == [
        SequenceGap("BTC", 7, 9, "gap", False),
        SequenceGap("BTC", 11, 1, "reset", False),
        SequenceGap("BTC", 3, 7, "gap", True),
    ]
    assert client.stats.sequence_gaps == 3


async def test_no_gap_reported_on_contiguous_stream_across_many_frames(make_server: MakeServer) -> None:
    server = await make_server(streamer)
    client = Client(server.url, config=config())
    gaps: list[SequenceGap] = []
    got: list[int] = []
    client.on(SeqTrade, lambda m: got.append(m.seq), seq_key=lambda m: (m.symbol, m.seq))
    client.on_gap(gaps.append)
    async with client:
        await client.wait_open(2)
        await client.send({"seqs": list(range(1, 2001))})
        await poll_until(lambda: len(got) == 2000)
    assert gaps == [] and got == list(range(1, 2001))


async def test_gzip_codec_round_trip(make_server: MakeServer) -> None:
    import gzip

    from wsclient import GzipJsonCodec

    async def gz(server: TestServer, ws: ServerConnection) -> None:
        async for raw in ws:
            server.received.append(raw)
            server.changed()
            await ws.send(gzip.compress(json.dumps({"type": "trade", "symbol": "X", "seq": 1}).encode()))

    server = await make_server(gz)
    client = Client(server.url, config=config(codec=GzipJsonCodec()))
    got: list[SeqTrade] = []
    client.on(SeqTrade, got.append)
    async with client:
        await client.wait_open(2)
        await client.send(SeqTrade(type="trade", symbol="X", seq=0))
        await poll_until(lambda: len(got) == 1)
    assert server.received == ['{"type":"trade","symbol":"X","seq":0}']
    assert got[0].seq == 1


# Random frames of every kind, sent through the echo server: each one must be accounted for in
# exactly one of handled / unknown / invalid, and the client must keep running.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
frames = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=50),
    json_values.map(json.dumps),
    st.builds(
        lambda seq, price: json.dumps({"e": "trade", "s": "X", "p": price, "seq": seq}),
        st.one_of(st.integers(), st.just(10**400), st.text(max_size=3)),
        st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False)),
    ),
    st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
    st.just('{"e": "trade", "s": "X", "p": "1", "seq": ' + "9" * 5000 + "}"),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=20))
async def test_random_frames_never_crash_and_are_all_accounted_for(
    server: TestServer, batch: list[str | bytes]
) -> None:
    client = Client(server.url, config=config(discriminator="e", max_size=2**20))
    handled: list[Trade] = []
    client.on(Trade, handled.append)
    client.on_unknown(lambda f: None)
    client.on_error(lambda item, exc: None)
    async with client:
        await client.wait_open(2)
        for f in batch:
            await client.send(f)
        await poll_until(lambda: client.stats.messages_in == len(batch))
        await poll_until(
            lambda: len(handled) + client.stats.unknown_messages + client.stats.invalid_messages == len(batch)
        )
        assert client.stats.connects == 1


async def test_on_connect_hook_can_make_a_request(make_server: MakeServer) -> None:
    async def login_server(server: TestServer, ws: ServerConnection) -> None:
        async for raw in ws:
            server.received.append(raw)
            server.changed()
            msg = json.loads(raw)
            if msg.get("op") == "login":
                await ws.send(json.dumps({"id": msg["id"], "result": "ok"}))

    server = await make_server(login_server)
    client = Client(server.url, config=config(open_timeout=2.0))
    acks: list[Any] = []

    @client.on_connect
    async def login(conn: Any) -> None:
        acks.append(await conn.request({"op": "login", "key": "k"}, timeout=1))

    client.subscribe({"op": "subscribe"})
    async with client:
        await client.wait_open(3)
        await server.wait_until(lambda: len(server.received) == 2)
    assert acks == [{"id": 1, "result": "ok"}]
    assert [json.loads(r)["op"] for r in server.received] == ["login", "subscribe"]


async def test_unhandled_invalid_and_unknown_frames_are_logged_rate_limited_and_redacted(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With no on_error / on_unknown, invalid and unknown frames are not silent: a few lines per
    minute each, the rest counted in the next line, secrets masked."""
    token = "tok-a9f8e7d6c5b4a3928171"
    bad = 30

    async def feed(server: TestServer, ws: ServerConnection) -> None:
        await ws.recv()
        for n in range(bad):
            await ws.send(frame(e="trade", s=f"leak {token}", p="x", seq=n))  # p is not a Decimal
            await ws.send(frame(e="kline", n=n))
        await ws.send(frame(e="trade", s="BTC", p="1", seq=bad))
        await ws.wait_closed()

    server = await make_server(feed)
    client = Client(
        server.url, config=config(discriminator="e"), headers={"Authorization": f"Bearer {token}"}
    )
    client.subscribe("sub")
    good: list[Trade] = []
    client.on(Trade, good.append)
    caplog.set_level("INFO", logger="wsclient")
    async with client:
        await poll_until(lambda: bool(good))
        stats = client.stats
    assert (stats.invalid_messages, stats.unknown_messages) == (bad, bad)
    records = [r for r in caplog.records if r.name == "wsclient"]
    invalid = [r.getMessage() for r in records if r.getMessage().startswith("invalid frame")]
    unknown = [r.getMessage() for r in records if r.getMessage().startswith("unknown frame")]
    assert invalid and unknown, "logged by default"
    assert len(invalid) < bad and len(unknown) < bad, "rate-limited, not one line per frame"
    assert all(r.levelname == "WARNING" for r in records if r.getMessage().startswith("invalid frame"))
    assert "leak ***" in invalid[0] and all(token not in line for line in invalid)


async def test_registered_hooks_take_over_from_the_log(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def feed(server: TestServer, ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(frame(e="trade", s="BTC", p="x", seq=1))
        await ws.send(frame(e="kline"))
        await ws.send(frame(e="trade", s="BTC", p="1", seq=2))
        await ws.wait_closed()

    server = await make_server(feed)
    client = Client(server.url, config=config(discriminator="e"))
    client.subscribe("sub")
    good: list[Trade] = []
    errors: list[object] = []
    unknown: list[object] = []
    client.on(Trade, good.append)
    client.on_error(lambda item, exc: errors.append(item))
    client.on_unknown(unknown.append)
    caplog.set_level("INFO", logger="wsclient")
    async with client:
        await poll_until(lambda: bool(good))
    assert len(errors) == 1 and len(unknown) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith(("invalid frame", "unknown frame"))]
