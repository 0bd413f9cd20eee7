"""Every FeedServer fault and every ChaosProxy mode, against a wsclient Client, with the outcome it must have.

test_feed_server.py and test_chaos_proxy.py check the kit itself with a raw websockets client; here the
kit is used the way a user's suite would (through the pytest plugin's fixtures) to check that the Client
does the right thing under each fault.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import pytest

from wsclient import (
    Client,
    ClientConfig,
    ClientEvent,
    Connected,
    ConnectFailed,
    ConnectionState,
    Disconnected,
    GaveUp,
    GaveUpError,
    HandshakeRejected,
    Heartbeat,
    HeartbeatMissed,
    Message,
    Reconnect,
    SequenceGap,
    TransportClosed,
)
from wsclient.testing import ChaosProxy, Fault, FeedServer

from .conftest import poll_until

if TYPE_CHECKING:  # imported by pytest as a plugin below; importing it first would skip assert rewriting
    from wsclient.testing.pytest_plugin import MakeChaosProxy, MakeFeedServer

pytest_plugins = ["wsclient.testing.pytest_plugin"]

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

SUBSCRIBE = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
# Close-code tests run without pings, so each checks one thing; a close frame racing an outstanding
# ping has its own test at the end.
NO_PINGS = Heartbeat(mode="off")


def config(**overrides: Any) -> ClientConfig:
    values: dict[str, Any] = {
        "heartbeat": Heartbeat(interval=0.05, timeout=0.15),
        "reconnect": Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5),
        "open_timeout": 0.5,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)


class Recorder:
    """Collects a client's events with their time; tests wait for one, event-driven and bounded."""

    def __init__(self, client: Client) -> None:
        self.events: list[tuple[float, ClientEvent]] = []
        self._changed = asyncio.Event()
        client.on_event(self._record)

    def _record(self, event: ClientEvent) -> None:
        self.events.append((time.monotonic(), event))
        self._changed.set()

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def at(self, event: ClientEvent) -> float:
        return next(t for t, e in self.events if e is event)

    async def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0, **fields: Any) -> list[Any]:
        def matching() -> list[Any]:
            return [e for e in self.of(kind) if all(getattr(e, k) == v for k, v in fields.items())]

        async with asyncio.timeout(timeout):
            while len(matching()) < count:
                self._changed.clear()
                await self._changed.wait()
        return matching()


async def ticks(feed: FeedServer, n: int) -> None:
    """Let ``n`` generator ticks of the feed pass: a clock the test waits on, not a guessed sleep."""
    seq = feed.stream_seq("trades", "BTC-USD")
    await feed.wait_for_seq("trades", "BTC-USD", seq + n, timeout=5 + n / feed.rate)


# ------------------------------------------------------------------------------------ FeedServer faults


@pytest.mark.parametrize("code", [1001, 1011, 1012])
async def test_close_with_a_retried_code_reconnects_and_resubscribes(
    feed_server: FeedServer, code: int
) -> None:
    client = Client(feed_server.url, config=config(heartbeat=NO_PINGS))
    client.subscribe(SUBSCRIBE)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await feed_server.wait_for_subscriptions("anonymous", 1)
        await feed_server.close_all(code, "bye")
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
        await feed_server.wait_for_subscriptions("anonymous", 1)
    assert (lost.code, lost.will_retry) == (code, True)
    assert feed_server.peak_connections() == 1


@pytest.mark.parametrize("code", [1002, 1008])
async def test_close_with_a_fatal_code_fails(feed_server: FeedServer, code: int) -> None:
    client = Client(feed_server.url, config=config(heartbeat=NO_PINGS))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await feed_server.close_all(code, "policy")
        with pytest.raises(GaveUpError) as failure:
            await asyncio.wait_for(client.wait_closed(), 5)
    assert client.state is ConnectionState.FAILED
    [lost] = rec.of(Disconnected)
    assert (lost.code, lost.will_retry) == (code, False)
    assert isinstance(failure.value.cause, TransportClosed) and failure.value.fatal
    assert feed_server.total_connections == 1


async def test_drop_is_1006_and_reconnects(feed_server: FeedServer) -> None:
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await feed_server.drop_all()
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
    assert (lost.code, lost.will_retry) == (1006, True)


async def test_unanswered_pings_give_a_dead_link_verdict(feed_server: FeedServer) -> None:
    # No subscription: frames arriving would rightly forgive the missing pong.
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        feed_server.ignore_pings = True
        [miss] = await rec.wait_for(HeartbeatMissed, fatal=True)
        [lost] = await rec.wait_for(Disconnected)
        feed_server.ignore_pings = False
        await rec.wait_for(Connected, reconnect=True)
    assert miss.kind == "pong" and miss.waited >= 0.15 - 0.01
    assert lost.code is None and "no pong" in lost.reason and lost.will_retry
    assert feed_server.pongs_suppressed >= 1


async def test_silent_feed_is_dead_after_receive_timeout(feed_server: FeedServer) -> None:
    hb = Heartbeat(interval=0.05, timeout=0.15, receive_timeout=0.3)
    client = Client(feed_server.url, config=config(heartbeat=hb))
    client.subscribe(SUBSCRIBE)
    frames: list[str | bytes] = []
    client.on_message(frames.append)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await poll_until(lambda: len(frames) >= 3)
        feed_server.silent = True
        [miss] = await rec.wait_for(HeartbeatMissed, fatal=True)
        [lost] = await rec.wait_for(Disconnected)
        feed_server.silent = False
        await rec.wait_for(Connected, reconnect=True)
        received = len(frames)
        await poll_until(lambda: len(frames) > received + 2)  # data flows again, resubscribed
    # Pongs still came (the socket was healthy): only the silence watchdog could tell.
    assert miss.kind == "silence" and miss.waited >= 0.3 - 0.01
    assert not [m for m in rec.of(HeartbeatMissed) if m.kind == "pong" and m.fatal]
    assert lost.code is None and lost.will_retry


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_handshake_fails_at_once(feed_server: FeedServer, status: int) -> None:
    feed_server.reject(status)
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        with pytest.raises(GaveUpError) as failure:
            await asyncio.wait_for(client.wait_closed(), 5)
    [attempt] = rec.of(ConnectFailed)
    assert (attempt.status, attempt.will_retry) == (status, False)
    assert rec.of(GaveUp)[0].fatal
    assert isinstance(failure.value.cause, HandshakeRejected) and failure.value.cause.status == status
    assert feed_server.rejected_handshakes == 1


async def test_429_with_retry_after_delays_the_retry(feed_server: FeedServer) -> None:
    feed_server.reject(429, retry_after=1)
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        [refused] = await rec.wait_for(ConnectFailed)
        feed_server.reject(None)
        [connected] = await rec.wait_for(Connected)
    assert (refused.status, refused.will_retry) == (429, True)
    assert refused.delay >= 1.0  # the server's word beats max_delay=0.05
    assert rec.at(connected) - rec.at(refused) >= 1.0 - 0.01
    assert feed_server.rejected_handshakes == 1


async def test_503_is_retried_with_backoff(feed_server: FeedServer) -> None:
    feed_server.reject(503)
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        await rec.wait_for(ConnectFailed, 2)
        feed_server.reject(None)
        await rec.wait_for(Connected)
    failures = rec.of(ConnectFailed)
    assert all(f.status == 503 and f.will_retry and f.delay <= 0.05 for f in failures)
    assert feed_server.rejected_handshakes == len(failures)


async def test_idle_cutoff_cuts_a_client_without_heartbeat(feed_server: FeedServer) -> None:
    feed_server.idle_cutoff = 0.1
    client = Client(feed_server.url, config=config(heartbeat=Heartbeat(mode="off")))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
    assert lost.code == 1006 and lost.will_retry
    assert feed_server.idle_cuts >= 1


async def test_idle_cutoff_never_cuts_a_client_with_heartbeat(make_feed_server: MakeFeedServer) -> None:
    feed = await make_feed_server(rate=100)
    feed.idle_cutoff = 0.15
    hb = Heartbeat(interval=0.03, timeout=0.1, server_idle_timeout=0.15)
    client = Client(feed.url, config=config(heartbeat=hb))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await ticks(feed, 60)  # 0.6 s: four idle cut-offs' worth
    assert feed.idle_cuts == 0
    assert rec.of(Disconnected) == [] and client.stats.connects == 1


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    price: Decimal
    seq: int


async def test_restart_resubscribes_and_the_gap_is_flagged_across_the_reconnect(
    make_feed_server: MakeFeedServer,
) -> None:
    feed = await make_feed_server(rate=100)
    reconnect = Reconnect(initial_delay=0.05, max_delay=0.1, jitter=0)  # 5+ ticks missed while away
    client = Client(feed.url, config=config(reconnect=reconnect, heartbeat=NO_PINGS))
    client.subscribe(SUBSCRIBE)
    trades: list[Trade] = []
    gaps: list[SequenceGap] = []
    client.on(Trade, trades.append, seq_key=lambda t: (t.symbol, t.seq))
    client.on_gap(gaps.append)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await poll_until(lambda: len(trades) >= 3)
        await feed.restart()
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
        await poll_until(lambda: bool(gaps))
    assert lost.code == 1012
    [gap] = gaps
    assert gap.kind == "gap" and gap.across_reconnect and gap.missing >= 1
    assert all(t.price > 0 for t in trades)


async def test_scheduled_faults_and_close_after(make_feed_server: MakeFeedServer) -> None:
    feed = await make_feed_server(rate=100, faults=[Fault(0.1, lambda s: s.close_all(1013, "try later"))])
    client = Client(feed.url, config=config(heartbeat=NO_PINGS))
    client.subscribe(SUBSCRIBE)
    rec = Recorder(client)
    async with client:
        [first] = await rec.wait_for(Disconnected)
        feed.close_after(messages=5, code=1011)  # ack + 4 trades, then 1011, on every new connection
        await rec.wait_for(Disconnected, 3)
    codes = [d.code for d in rec.of(Disconnected)]
    assert first.code == 1013 and codes[1:3] == [1011, 1011]
    assert feed.schedule_errors == []


# ------------------------------------------------------------------------------------ ChaosProxy modes


def through(proxy: ChaosProxy, feed: FeedServer, **overrides: Any) -> Client:
    return Client(proxy.url(feed.path), config=config(**overrides))


async def test_latency_shows_in_the_round_trip_time(feed_server: FeedServer, chaos_proxy: ChaosProxy) -> None:
    client = through(chaos_proxy, feed_server, heartbeat=Heartbeat(interval=0.05, timeout=1.0))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        chaos_proxy.latency = 0.05  # each way
        await poll_until(lambda: (client.stats.last_rtt or 0.0) >= 0.1 - 0.005)
    assert rec.of(Disconnected) == []


async def test_low_bandwidth_delivers_everything_without_false_dead_links(
    make_feed_server: MakeFeedServer, make_chaos_proxy: MakeChaosProxy
) -> None:
    feed = await make_feed_server(rate=100)
    proxy = await make_chaos_proxy(feed)
    proxy.bandwidth = 4000  # bytes/s, below the feed's ~15 kB/s: pongs queue behind data
    # A pong timeout a loaded machine's scheduling pauses stay below (0.15 s was not, with eight
    # test workers on two CPUs); the pongs still come seconds late, so every verdict is extended.
    client = through(proxy, feed, heartbeat=Heartbeat(interval=0.05, timeout=0.4))
    client.subscribe(SUBSCRIBE)
    trades: list[Trade] = []
    client.on(Trade, trades.append)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await poll_until(lambda: len(trades) >= 40)
    seqs = [t.seq for t in trades]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert rec.of(Disconnected) == []
    misses = rec.of(HeartbeatMissed)
    assert misses, "the pongs were late: the verdicts were extended"
    assert not [m for m in misses if m.fatal]


async def test_blackhole_gives_a_dead_link_verdict_then_recovers(
    feed_server: FeedServer, chaos_proxy: ChaosProxy
) -> None:
    client = through(chaos_proxy, feed_server)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        chaos_proxy.blackhole(True)
        [miss] = await rec.wait_for(HeartbeatMissed, fatal=True)
        [lost] = await rec.wait_for(Disconnected)
        chaos_proxy.blackhole(False)
        await rec.wait_for(Connected, reconnect=True)
    assert miss.kind == "pong"
    assert lost.code is None and lost.will_retry


@pytest.mark.parametrize("fault", ["reset", "drop_all"])
async def test_reset_and_fin_are_1006_and_reconnect(
    feed_server: FeedServer, chaos_proxy: ChaosProxy, fault: str
) -> None:
    client = through(chaos_proxy, feed_server)
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await getattr(chaos_proxy, fault)()
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
    assert (lost.code, lost.will_retry) == (1006, True)


async def test_proxy_idle_cut_without_heartbeat(feed_server: FeedServer, chaos_proxy: ChaosProxy) -> None:
    chaos_proxy.idle_timeout = 0.1
    client = through(chaos_proxy, feed_server, heartbeat=Heartbeat(mode="off"))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        [lost] = await rec.wait_for(Disconnected)
        await rec.wait_for(Connected, reconnect=True)
    assert lost.code == 1006 and chaos_proxy.idle_cuts >= 1


async def test_proxy_idle_cut_never_happens_with_heartbeat(
    make_feed_server: MakeFeedServer, make_chaos_proxy: MakeChaosProxy
) -> None:
    feed = await make_feed_server(rate=100)
    proxy = await make_chaos_proxy(feed)
    proxy.idle_timeout = 0.15
    hb = Heartbeat(interval=0.03, timeout=0.1, server_idle_timeout=0.15)
    client = through(proxy, feed, heartbeat=hb)  # no subscription: only pongs come back
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await ticks(feed, 60)
    assert proxy.idle_cuts == 0 and rec.of(Disconnected) == []


async def test_refused_connections_are_retried_then_give_up(
    feed_server: FeedServer, chaos_proxy: ChaosProxy
) -> None:
    chaos_proxy.refuse(True)
    reconnect = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, max_attempts=3)
    client = through(chaos_proxy, feed_server, reconnect=reconnect)
    rec = Recorder(client)
    async with client:
        with pytest.raises(GaveUpError) as failure:
            await asyncio.wait_for(client.wait_closed(), 5)
    assert [f.will_retry for f in rec.of(ConnectFailed)] == [True, True, False]
    assert not failure.value.fatal and failure.value.attempts == 3
    assert chaos_proxy.refused_connections == 3 and feed_server.total_connections == 0


async def test_refusal_lifted_connects(feed_server: FeedServer, chaos_proxy: ChaosProxy) -> None:
    chaos_proxy.refuse(True)
    client = through(chaos_proxy, feed_server)
    rec = Recorder(client)
    async with client:
        await rec.wait_for(ConnectFailed, 2)
        chaos_proxy.refuse(False)
        await client.wait_open(5)
    assert feed_server.total_connections == 1


# ------------------------------------------------------------------------------------ core details


async def test_inbound_queue_is_empty_on_an_idle_reconnected_client(feed_server: FeedServer) -> None:
    client = Client(feed_server.url, config=config())
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        await feed_server.drop_all()
        await rec.wait_for(Connected, reconnect=True)
        await ticks(feed_server, 10)  # nothing is sent to this client meanwhile
        assert client.stats.inbound_queued == 0


async def test_fatal_close_while_a_ping_is_outstanding_still_fails(feed_server: FeedServer) -> None:
    # The pong awaited when the close frame arrives must fail with the close code, not hide it.
    client = Client(feed_server.url, config=config(heartbeat=Heartbeat(interval=0.05, timeout=2.0)))
    rec = Recorder(client)
    async with client:
        await client.wait_open(5)
        feed_server.ignore_pings = True
        await feed_server.wait_until(lambda: feed_server.pongs_suppressed >= 1)  # a ping is outstanding
        await feed_server.close_all(1008, "policy")
        [lost] = await rec.wait_for(Disconnected)
    assert (lost.code, lost.will_retry) == (1008, False)
