"""The client's supervisor, driven through the in-memory transport on a virtual clock.

Realistic intervals (a 5 s heartbeat, backoffs of seconds) run in milliseconds on looptime's clock, and
every duration asserted here is loop time: exact, whatever the machine's load. The client is used
through its public API (events, stats, ``Client(connector=...)``); the server side is a
:class:`~wsclient.transport.memory.MemoryServer` the tests script.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pytest

from wsclient import (
    Client,
    ClientClosedError,
    ClientConfig,
    ClientEvent,
    Closed,
    Connected,
    ConnectFailed,
    ConnectionLostError,
    ConnectionState,
    Disconnected,
    GaveUp,
    GaveUpError,
    HeartbeatMissed,
    MessageDropped,
    Reconnect,
    Reconnecting,
    TransportClosed,
    UnsafeRedirect,
)
from wsclient.config import Heartbeat
from wsclient.state import LINK_TRANSITIONS, LinkEvent, LinkPhase, LinkPhaseMachine
from wsclient.transport.memory import MemoryConnection, MemoryServer

pytestmark = pytest.mark.looptime

URL = "ws://feed.test/ws"
INTERVAL, TIMEOUT = 5.0, 3.0
CLOSE_TIMEOUT = 2.0

Ev = TypeVar("Ev")


def now() -> float:
    return asyncio.get_running_loop().time()


class Events:
    """A client's events with the loop time of each; event-driven, bounded waits."""

    def __init__(self, client: Client) -> None:
        self.log: list[tuple[float, ClientEvent]] = []
        self._changed = asyncio.Event()
        client.on_event(self._record)

    def _record(self, event: ClientEvent) -> None:
        self.log.append((now(), event))
        self._changed.set()

    def of(self, kind: type[Ev]) -> list[Ev]:
        return [e for _, e in self.log if isinstance(e, kind)]

    def at(self, kind: type[Any]) -> list[float]:
        return [t for t, e in self.log if isinstance(e, kind)]

    async def wait_for(self, kind: type[Ev], count: int = 1, timeout: float = 120.0) -> list[Ev]:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:  # bounded by the timeout
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind)


def make_client(
    server: MemoryServer,
    *,
    heartbeat: Heartbeat | None = None,
    reconnect: Reconnect | None = None,
    headers: dict[str, str] | None = None,
    url: str = URL,
    **config: Any,
) -> tuple[Client, Events]:
    client = Client(
        url,
        config=ClientConfig(
            heartbeat=heartbeat or Heartbeat(interval=INTERVAL, timeout=TIMEOUT),
            reconnect=reconnect or Reconnect(initial_delay=1.0, max_delay=8.0, jitter=0.0, reset_after=10.0),
            open_timeout=4.0,
            close_timeout=CLOSE_TIMEOUT,
            **config,
        ),
        headers=headers,
        connector=server.connect,
    )
    return client, Events(client)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def decoded(frames: list[str | bytes]) -> list[Any]:
    return [json.loads(f) if isinstance(f, str) and f.startswith("{") else f for f in frames]


async def wait_closed(client: Client, timeout: float = 120.0) -> BaseException | None:
    """Wait for the client's end; return what wait_closed() raised (GaveUpError), if anything."""
    async with asyncio.timeout(timeout):
        try:
            await client.wait_closed()
        except GaveUpError as exc:
            return exc
    return None


# -- the reconnect loop --------------------------------------------------------------------------------------


async def test_connect_failures_back_off_exponentially_up_to_max_delay() -> None:
    server = MemoryServer()
    server.refuse(times=5)
    client, events = make_client(server, reconnect=Reconnect(initial_delay=1.0, max_delay=4.0, jitter=0.0))
    async with client:
        await events.wait_for(Connected)
        stats = client.stats
    failed = events.of(ConnectFailed)
    assert [f.attempt for f in failed] == [1, 2, 3, 4, 5]
    assert [f.delay for f in failed] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(f.will_retry and f.reason == "connection refused" and f.status is None for f in failed)
    assert [r.attempt for r in events.of(Reconnecting)] == [2, 3, 4, 5, 6]
    # The delays are what the client really waited, on the loop's clock.
    assert gaps([h.at for h in server.handshakes]) == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert (stats.connect_failures, stats.connects, stats.reconnects) == (5, 1, 0)


async def test_the_attempt_count_resets_only_after_reset_after_seconds_of_uptime() -> None:
    server = MemoryServer()
    client, events = make_client(
        server, reconnect=Reconnect(initial_delay=1.0, max_delay=8.0, jitter=0.0, reset_after=10.0)
    )
    uptimes = [1.0, 1.0, 9.5, 10.0, 1.0]
    async with client:
        for n, uptime in enumerate(uptimes, 1):
            await events.wait_for(Connected, n)
            await asyncio.sleep(uptime)
            server.connections[n - 1].close(1012, "restart")
            await events.wait_for(Disconnected, n)
        await events.wait_for(Connected, len(uptimes) + 1)
    lost = events.of(Disconnected)
    # An accept-then-drop server sees growing delays; only 10 s of uptime start a new series.
    assert [d.delay for d in lost] == [1.0, 2.0, 4.0, 1.0, 2.0]
    assert all(d.code == 1012 and d.will_retry for d in lost)
    assert [r.attempt for r in events.of(Reconnecting)] == [2, 3, 4, 2, 3]


async def test_max_attempts_exhausted_fails_with_gave_up_error() -> None:
    server = MemoryServer()
    server.refuse(times=None)
    client, events = make_client(server, reconnect=Reconnect(initial_delay=1.0, max_attempts=3, jitter=0.0))
    await client.start()
    failure = await wait_closed(client)
    assert isinstance(failure, GaveUpError)
    assert (failure.attempts, failure.fatal) == (3, False)
    assert isinstance(failure.cause, ConnectionRefusedError)
    assert client.state is ConnectionState.FAILED
    assert events.of(GaveUp) == [GaveUp(3, "connection refused", False)]
    assert [(f.will_retry, f.delay) for f in events.of(ConnectFailed)] == [
        (True, 1.0),
        (True, 2.0),
        (False, None),
    ]
    assert len(server.handshakes) == 3
    with pytest.raises(ClientClosedError):
        await client.send("too late")
    await client.close()
    assert client.state is ConnectionState.FAILED


@pytest.mark.parametrize(
    ("status", "retry_after", "max_retry_after", "waited"),
    [
        (503, "7", None, 7.0),  # above max_delay (2 s): honoured
        (429, "3600", 20.0, 20.0),  # an hour: cut to max_retry_after
        (429, "0", None, 1.0),  # below the backoff: the backoff wins
    ],
)
async def test_retry_after_is_honoured_and_capped(
    status: int, retry_after: str, max_retry_after: float | None, waited: float
) -> None:
    server = MemoryServer()
    server.reject(status, {"Retry-After": retry_after}, b"slow down")
    client, events = make_client(
        server,
        reconnect=Reconnect(initial_delay=1.0, max_delay=2.0, jitter=0.0, max_retry_after=max_retry_after),
    )
    async with client:
        await events.wait_for(Connected)
    [failed] = events.of(ConnectFailed)
    assert (failed.status, failed.retry_after, failed.delay) == (status, float(retry_after), waited)
    assert gaps([h.at for h in server.handshakes]) == [waited]


@pytest.mark.parametrize(
    ("code", "fatal_codes", "fatal"),
    [
        *[(code, None, True) for code in (1002, 1003, 1007, 1008, 1010)],
        *[(code, None, False) for code in (1000, 1001, 1011, 1012, 1013, 1014)],
        (4001, frozenset({4001}), True),  # configurable
        (1008, frozenset({4001}), False),
    ],
)
async def test_fatal_close_codes_give_up_and_the_others_reconnect(
    code: int, fatal_codes: frozenset[int] | None, fatal: bool
) -> None:
    server = MemoryServer()
    policy = Reconnect(initial_delay=1.0, jitter=0.0)
    if fatal_codes is not None:
        policy = Reconnect(initial_delay=1.0, jitter=0.0, fatal_close_codes=fatal_codes)
    client, events = make_client(server, reconnect=policy)
    await client.start()
    try:
        await events.wait_for(Connected)
        server.connections[0].close(code, "bye")
        [lost] = await events.wait_for(Disconnected)
        assert (lost.code, lost.will_retry) == (code, not fatal)
        if fatal:
            failure = await wait_closed(client)
            assert isinstance(failure, GaveUpError) and failure.fatal and failure.attempts == 1
            assert isinstance(failure.cause, TransportClosed) and failure.cause.code == code
            assert len(server.handshakes) == 1
        else:
            await events.wait_for(Connected, 2)
            assert lost.delay == 1.0
    finally:
        await client.close()


async def test_a_close_the_client_sent_itself_is_retried_even_with_a_fatal_code() -> None:
    server = MemoryServer()
    client, events = make_client(
        server, reconnect=Reconnect(initial_delay=1.0, jitter=0.0, fatal_close_codes={1009}), max_size=64
    )
    async with client:
        await events.wait_for(Connected)
        server.connections[0].send("x" * 65)  # over max_size: the client closes with 1009
        [lost] = await events.wait_for(Disconnected)
        await events.wait_for(Connected, 2)
    assert (lost.code, lost.will_retry) == (1009, True)
    assert server.connections[0].close_code == 1009


@pytest.mark.parametrize(
    ("status", "fatal"), [(401, True), (403, True), (404, True), (500, False), (502, False)]
)
async def test_fatal_handshake_statuses_give_up_and_5xx_is_retried(status: int, fatal: bool) -> None:
    server = MemoryServer()
    server.reject(status)
    client, events = make_client(server)
    await client.start()
    try:
        if fatal:
            failure = await wait_closed(client)
            assert isinstance(failure, GaveUpError) and failure.fatal
            assert [(f.status, f.will_retry) for f in events.of(ConnectFailed)] == [(status, False)]
            assert len(server.handshakes) == 1
        else:
            await events.wait_for(Connected)
            assert [(f.status, f.will_retry, f.delay) for f in events.of(ConnectFailed)] == [
                (status, True, 1.0)
            ]
    finally:
        await client.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_followed_and_credentials_are_not_sent_to_another_origin(status: int) -> None:
    server = MemoryServer()
    server.redirect("ws://mirror.test/v2", status=status)
    client, events = make_client(server, headers={"Authorization": "Bearer abcdef0123456789"})
    async with client:
        [connected] = await events.wait_for(Connected)
    assert connected.url == "ws://mirror.test/v2"
    assert [h.url for h in server.handshakes] == [URL, "ws://mirror.test/v2"]
    assert server.handshakes[0].headers["Authorization"] == "Bearer abcdef0123456789"
    assert "Authorization" not in server.handshakes[1].headers
    assert events.of(ConnectFailed) == []


async def test_a_redirect_from_wss_to_plain_text_is_fatal_and_too_many_redirects_are_retried() -> None:
    server = MemoryServer()
    server.redirect("ws://downgrade.test/ws")
    client, _ = make_client(server, url="wss://feed.test/ws")
    await client.start()
    failure = await wait_closed(client)
    assert isinstance(failure, GaveUpError) and failure.fatal and isinstance(failure.cause, UnsafeRedirect)

    server = MemoryServer()
    server.redirect("/a")
    server.redirect("/b")  # one hop more than max_redirects allows: this attempt fails, the next connects
    client, events = make_client(server, max_redirects=1)
    async with client:
        await events.wait_for(Connected)
    [failed] = events.of(ConnectFailed)
    assert "too many redirects" in failed.reason and failed.will_retry
    assert [h.url for h in server.handshakes] == [URL, "ws://feed.test/a", URL]


# -- dead-link verdicts --------------------------------------------------------------------------------------


async def test_answered_pings_keep_the_link_up_and_measure_the_round_trip() -> None:
    server = MemoryServer(pong_delay=0.2)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        await asyncio.sleep(62.0)
        stats = client.stats
    assert len(server.connections[0].pings) == 12  # every 5 s
    assert stats.last_rtt == pytest.approx(0.2)
    assert events.of(Disconnected) == [] and events.of(HeartbeatMissed) == []


async def test_a_missed_pong_declares_the_link_dead_within_interval_plus_timeout() -> None:
    server = MemoryServer(auto_pong=False)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        [lost] = await events.wait_for(Disconnected)
        await events.wait_for(Connected, 2)
    [opened, _] = events.at(Connected)
    [dead] = events.at(Disconnected)
    assert dead - opened == pytest.approx(INTERVAL + TIMEOUT)
    assert lost.code is None and "no pong" in lost.reason and lost.will_retry
    assert events.of(HeartbeatMissed) == [HeartbeatMissed(1, "pong", TIMEOUT, True)]
    first = server.connections[0]
    assert first.ended_at == pytest.approx(dead)  # aborted at once, no close handshake
    assert first.close_code is None
    assert client.stats.heartbeat_misses == 1


async def test_frames_arriving_forgive_a_missed_pong_until_they_stop() -> None:
    server = MemoryServer(auto_pong=False)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        opened = now()
        conn = server.connections[0]
        await asyncio.sleep(0.5)
        for i in range(20):  # a frame every second, off the timers' beat; the pong never comes
            conn.send(f"tick {i}")
            await asyncio.sleep(1.0)
        last_frame = opened + 19.5
        assert conn.open and events.of(Disconnected) == []
        await events.wait_for(Disconnected)
    [dead] = events.at(Disconnected)
    missed = events.of(HeartbeatMissed)
    assert [m.fatal for m in missed] == [False] * (len(missed) - 1) + [True]
    assert len(missed) >= 4  # judged every timeout while frames came, forgiven each time
    assert last_frame < dead <= last_frame + 2 * TIMEOUT
    assert conn.pings == [conn.pings[0]]  # the one ping's pong stayed owed throughout


async def test_a_black_holed_link_is_declared_dead_within_interval_plus_timeout() -> None:
    server = MemoryServer()
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        await asyncio.sleep(INTERVAL + 1.0)  # one ping answered
        conn = server.connections[0]
        conn.blackhole()
        holed = now()
        conn.send("lost on the way")
        await client.send("into the void")  # taken by the write buffer, never delivered
        [lost] = await events.wait_for(Disconnected)
        await events.wait_for(Connected, 2)
    [dead] = events.at(Disconnected)
    assert dead - holed <= INTERVAL + TIMEOUT
    assert "no pong" in lost.reason
    assert conn.received == [] and len(conn.pings) == 1
    assert client.stats.messages_in == 0
    assert conn.ended_at == pytest.approx(dead)


async def test_a_silent_feed_is_declared_dead_after_receive_timeout_though_pongs_arrive() -> None:
    server = MemoryServer()
    client, events = make_client(
        server, heartbeat=Heartbeat(interval=INTERVAL, timeout=TIMEOUT, receive_timeout=12.0)
    )
    async with client:
        await events.wait_for(Connected)
        conn = server.connections[0]
        for i in range(5):  # a frame every 10 s keeps the watchdog quiet
            await asyncio.sleep(10.0)
            conn.send(f"update {i}")
        last_frame = now()
        assert events.of(Disconnected) == []
        [lost] = await events.wait_for(Disconnected)
    [dead] = events.at(Disconnected)
    assert dead - last_frame == pytest.approx(12.0)
    assert "no inbound frame" in lost.reason
    assert events.of(HeartbeatMissed) == [HeartbeatMissed(1, "silence", 12.0, True)]
    assert len(conn.pings) >= 12  # answered all along: pongs are no feed


async def test_a_peer_that_stopped_reading_is_dead_even_while_its_frames_arrive() -> None:
    server = MemoryServer(send_buffer=1000, write_limit=1000)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        opened = now()
        conn = server.connections[0]
        conn.stop_reading()
        order = asyncio.create_task(client.send("order " + "x" * 3000))  # fills the buffer, then waits
        for i in range(40):  # bounded; the server streams on while it reads nothing
            if not conn.open:
                break
            conn.send(f"tick {i}")
            await asyncio.sleep(0.5)
        with pytest.raises(ConnectionLostError):
            await order
        await events.wait_for(Connected, 2)
        await client.send("after")
        await server.connections[1].wait_received(1)
    [dead] = events.at(Disconnected)
    assert dead - opened == pytest.approx(INTERVAL + TIMEOUT)
    assert events.of(HeartbeatMissed)[0].fatal  # frames came, yet no forgiveness
    assert client.stats.messages_in >= 10
    assert server.connections[1].received == ["after"]  # the order lost in flight was not re-sent


# -- replay order --------------------------------------------------------------------------------------------


async def test_hooks_then_subscriptions_then_outbox_then_live_sends_after_every_reconnect() -> None:
    server = MemoryServer()
    client, events = make_client(server)

    @client.on_connect
    async def login(conn: Any) -> None:
        await conn.send({"op": "login", "link": conn.id})

    for channel in ("a", "b", "c"):
        client.subscribe({"op": "sub", "ch": channel})
    await client.send("queued before start")
    async with client:
        await events.wait_for(Connected)
        await client.send("live 1")
        client.subscribe({"op": "sub", "ch": "d"})  # while open: sent now, replayed later
        first = server.connections[0]
        await first.wait_received(7)
        first.close(1012)
        await events.wait_for(Disconnected)
        await client.send("queued while down")
        await events.wait_for(Connected, 2)
        await client.send("live 2")
        second = server.connections[1]
        await second.wait_received(7)
    subs = [{"op": "sub", "ch": ch} for ch in "abc"]
    assert decoded(first.received) == [
        {"op": "login", "link": 1},
        *subs,
        "queued before start",
        "live 1",
        {"op": "sub", "ch": "d"},
    ]
    assert decoded(second.received) == [
        {"op": "login", "link": 2},
        *subs,
        {"op": "sub", "ch": "d"},
        "queued while down",
        "live 2",
    ]


async def test_the_replay_is_paced_by_replay_interval() -> None:
    server = MemoryServer()
    client, events = make_client(server, replay_interval=0.5)
    for channel in ("a", "b", "c", "d"):
        client.subscribe({"op": "sub", "ch": channel})
    async with client:
        await events.wait_for(Connected)
        conn = server.connections[0]
        await conn.wait_received(4)
    assert gaps(conn.received_at) == [0.5, 0.5, 0.5]
    assert events.at(Connected)[0] == pytest.approx(conn.received_at[-1])


# -- invariants ----------------------------------------------------------------------------------------------


def _queue_handshake_failures(server: MemoryServer, conn: MemoryConnection) -> None:
    server.refuse()
    server.hang()
    server.reject(503, {"Retry-After": "1"})
    conn.close(1001)


FAULTS: list[Callable[[MemoryServer, MemoryConnection], None]] = [
    lambda _, conn: conn.close(1012),
    lambda _, conn: conn.drop(),
    lambda _, conn: conn.blackhole(),
    _queue_handshake_failures,
    lambda _, conn: conn.close(1001, finish=False),
    lambda _, conn: conn.close(None),
    lambda _, conn: conn.stop_reading(),  # with pongs owed: a dead link that still sends
]


async def test_a_client_never_holds_two_live_links_whatever_the_server_does() -> None:
    server = MemoryServer()
    client, events = make_client(server, reconnect=Reconnect(initial_delay=0.5, max_delay=2.0, jitter=0.0))
    async with client:
        for n, fault in enumerate(FAULTS, 1):
            await events.wait_for(Connected, n)
            conn = server.connections[n - 1]
            fault(server, conn)
            await conn.wait_closed(timeout=60.0)
        await events.wait_for(Connected, len(FAULTS) + 1)
        assert len(server.open_connections) == 1
    # Every handshake began with no other link of the client up: a link is gone before the next one.
    assert [h.open_connections for h in server.handshakes] == [0] * len(server.handshakes)
    assert server.peak_open == 1
    assert server.open_connections == []
    assert len(server.handshakes) == len(FAULTS) + 1 + 3  # the three failed handshakes
    assert client.stats.connects == len(FAULTS) + 1


async def test_a_live_send_lost_in_flight_raises_and_is_never_re_sent() -> None:
    server = MemoryServer(send_buffer=100, write_limit=100)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        first = server.connections[0]
        first.stop_reading()
        order = asyncio.create_task(client.send("order-1 " + "x" * 500))
        await asyncio.sleep(1.0)
        assert not order.done()
        first.drop()
        with pytest.raises(ConnectionLostError):
            await order
        await events.wait_for(Connected, 2)
        await client.send("order-2")
        second = server.connections[1]
        await second.wait_received(1)
        await asyncio.sleep(5.0)
    assert first.received == []
    assert second.received == ["order-2"]


async def _lose_link_during_flush(
    server: MemoryServer, kill: Callable[[MemoryConnection], None]
) -> tuple[Events, list[str | bytes]]:
    """Queue A (large), B, C while down; the next link stalls on A during the flush and dies."""
    client, events = make_client(server)

    @client.on_connect
    def stall_second_link(conn: Any) -> None:
        if conn.id == 2:
            server.connections[-1].stop_reading()

    big = "A" * 5000
    async with client:
        await events.wait_for(Connected)
        server.connections[0].close(1012)
        await events.wait_for(Disconnected)
        for frame in (big, "B", "C"):
            await client.send(frame)
        await server.wait_connections(2)
        await asyncio.sleep(1.0)  # the flush is stuck on A
        kill(server.connections[1])
        await events.wait_for(Connected, 2)
        third = server.connections[2]
        await third.wait_received(2)
        await asyncio.sleep(1.0)
    assert big not in third.received  # never re-sent
    assert third.received == ["B", "C"]
    return events, [d.data for d in events.of(MessageDropped)]


async def test_a_queued_frame_lost_in_flight_when_the_link_drops_is_reported_not_re_sent() -> None:
    _, dropped = await _lose_link_during_flush(
        MemoryServer(send_buffer=100, write_limit=100), lambda c: c.drop()
    )
    assert dropped == ["A" * 5000]


async def test_a_queued_frame_lost_in_flight_when_the_heartbeat_kills_the_link_is_reported() -> None:
    # Nothing is done to the link: the heartbeat finds it dead (no pong, the buffer not draining).
    _, dropped = await _lose_link_during_flush(MemoryServer(send_buffer=100, write_limit=100), lambda c: None)
    assert dropped == ["A" * 5000]


# -- close() -------------------------------------------------------------------------------------------------


async def _connecting(server: MemoryServer, client: Client, events: Events) -> None:
    server.hang(times=None)
    await client.start()
    await server.wait_handshakes(1)


async def _in_hooks(server: MemoryServer, client: Client, events: Events) -> None:
    never = asyncio.Event()

    @client.on_connect
    async def stuck(conn: Any) -> None:
        await never.wait()

    await client.start()
    await server.wait_connections(1)


async def _open(server: MemoryServer, client: Client, events: Events) -> None:
    await client.start()
    await events.wait_for(Connected)


async def _open_deaf(server: MemoryServer, client: Client, events: Events) -> None:
    await _open(server, client, events)
    server.connections[0].echo_close = False


async def _open_black_holed(server: MemoryServer, client: Client, events: Events) -> None:
    await _open(server, client, events)
    server.connections[0].blackhole()


async def _open_blocked_send(server: MemoryServer, client: Client, events: Events) -> None:
    await _open(server, client, events)
    server.connections[0].stop_reading()
    asyncio.create_task(client.send("x" * 200_000))  # noqa: RUF006 - ends with the link
    await asyncio.sleep(0.1)


async def _reconnecting(server: MemoryServer, client: Client, events: Events) -> None:
    server.refuse()
    await client.start()
    await events.wait_for(Reconnecting)


async def _failed(server: MemoryServer, client: Client, events: Events) -> None:
    server.refuse(times=None)
    await client.start()
    await wait_closed(client)


CLOSE_CASES: dict[
    str, tuple[Callable[[MemoryServer, Client, Events], Awaitable[None]], float, ConnectionState]
] = {
    "connecting": (_connecting, 0.0, ConnectionState.CLOSED),
    "in on_connect hooks": (_in_hooks, 0.0, ConnectionState.CLOSED),
    "open": (_open, 0.0, ConnectionState.CLOSED),
    "open, the server never answers the close": (_open_deaf, CLOSE_TIMEOUT, ConnectionState.CLOSED),
    "open, black-holed": (_open_black_holed, CLOSE_TIMEOUT, ConnectionState.CLOSED),
    "open, a send blocked on backpressure": (_open_blocked_send, CLOSE_TIMEOUT, ConnectionState.CLOSED),
    "reconnecting, 30 s backoff": (_reconnecting, 0.0, ConnectionState.CLOSED),
    "failed": (_failed, 0.0, ConnectionState.FAILED),
}


@pytest.mark.parametrize("case", CLOSE_CASES)
async def test_close_is_bounded_and_idempotent_in_every_state(case: str) -> None:
    setup, takes, final = CLOSE_CASES[case]
    before = asyncio.all_tasks()
    server = MemoryServer()
    client, events = make_client(
        server, reconnect=Reconnect(initial_delay=30.0, max_delay=30.0, jitter=0.0, max_attempts=2)
    )
    await setup(server, client, events)
    started = now()
    await client.close(4000, "done")
    took = now() - started
    assert took == pytest.approx(takes)
    await client.close()
    assert now() - started == pytest.approx(took)  # the second one does nothing
    assert client.state is final
    assert server.open_connections == []
    assert asyncio.all_tasks() - before == set()
    await client.wait_closed() if final is ConnectionState.CLOSED else None
    with pytest.raises(ClientClosedError):
        await client.send("after close")
    if final is ConnectionState.CLOSED:
        assert events.of(Closed) == [Closed(4000, "done")]
    for conn in server.connections:
        assert conn.close_code in (None, 4000)


async def test_close_before_start_closes_at_once_with_nothing_left_behind() -> None:
    before = asyncio.all_tasks()
    server = MemoryServer()
    client, _ = make_client(server)
    await client.send("never sent")  # waits in the outbox: reported dropped by the close
    dropped: list[object] = []
    client.on_event(lambda e: dropped.append(e.data) if isinstance(e, MessageDropped) else None)
    await client.close()
    assert client.state is ConnectionState.CLOSED
    assert dropped == ["never sent"]
    await client.wait_closed()
    assert server.handshakes == []
    assert asyncio.all_tasks() - before == set()
    with pytest.raises(ClientClosedError):
        await client.start()


async def test_close_before_start_is_idempotent() -> None:
    client, _ = make_client(MemoryServer())
    await client.close()
    await client.close()


async def test_close_survives_its_caller_being_cancelled_and_concurrent_calls() -> None:
    server = MemoryServer()
    client, events = make_client(server)
    await client.start()
    await events.wait_for(Connected)
    conn = server.connections[0]
    conn.echo_close = False  # the close handshake takes close_timeout
    started = now()
    closer = asyncio.create_task(client.close(4000, "bye"))
    await asyncio.sleep(0.5)
    closer.cancel()
    await asyncio.gather(closer, return_exceptions=True)
    assert closer.cancelled()
    others = [asyncio.create_task(client.close()) for _ in range(3)]
    async with asyncio.timeout(10.0):
        await client.wait_closed()
        await asyncio.gather(*others)
    assert now() - started == pytest.approx(CLOSE_TIMEOUT)
    assert client.state is ConnectionState.CLOSED
    assert conn.close_code == 4000
    assert events.of(Closed) == [Closed(4000, "bye")]
    assert not conn.open


# -- link phases ---------------------------------------------------------------------------------------------


class _RecordingPhases(LinkPhaseMachine):
    """A link's phase machine that keeps its path (old phase, event, new phase)."""

    paths: ClassVar[list[list[tuple[LinkPhase, LinkEvent, LinkPhase]]]] = []

    def __init__(self, phase: LinkPhase = LinkPhase.HANDSHAKE) -> None:
        super().__init__(phase)
        self.path: list[tuple[LinkPhase, LinkEvent, LinkPhase]] = []
        _RecordingPhases.paths.append(self.path)

    def handle(self, event: LinkEvent) -> LinkPhase:
        old = self.state
        new = super().handle(event)
        self.path.append((old, event, new))
        return new


P, L = LinkPhase, LinkEvent
_UP = [
    (P.HANDSHAKE, L.OPENED, P.HOOKS),
    (P.HOOKS, L.HOOKED, P.REPLAY),
    (P.REPLAY, L.REPLAYED, P.FLUSH),
    (P.FLUSH, L.FLUSHED, P.OPEN),
]


@pytest.fixture
def link_paths(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[LinkPhase, LinkEvent, LinkPhase]]]:
    """The phase path of every link made, in order (the link module's machine, recording)."""
    paths: ClassVar[list[list[tuple[LinkPhase, LinkEvent, LinkPhase]]]] = []
    monkeypatch.setattr(_RecordingPhases, "paths", paths)
    monkeypatch.setattr("wsclient.link.LinkPhaseMachine", _RecordingPhases)
    return paths


async def test_link_phases_follow_the_table(
    link_paths: list[list[tuple[LinkPhase, LinkEvent, LinkPhase]]],
) -> None:
    server = MemoryServer()
    server.refuse()
    client, events = make_client(server)
    hook_failed = False

    @client.on_connect
    async def flaky(conn: Any) -> None:
        nonlocal hook_failed
        if conn.id == 3 and not hook_failed:
            hook_failed = True
            raise RuntimeError("login failed")

    client.subscribe("sub")
    async with client:
        await events.wait_for(Connected)  # link 2: link 1 was refused
        server.connections[0].close(1012)
        await events.wait_for(Connected, 2)  # link 4: link 3's hook failed
    for path in link_paths:
        for old, event, new in path:
            assert LINK_TRANSITIONS[(old, event)] is new
    lost_while = [(P.OPEN, L.LOST, P.CLOSED)]
    assert link_paths == [
        [(P.HANDSHAKE, L.LOST, P.CLOSED)],
        [*_UP, *lost_while],
        [_UP[0], (P.HOOKS, L.LOST, P.CLOSED)],
        [*_UP, (P.OPEN, L.CLOSE, P.CLOSING), (P.CLOSING, L.CLOSED, P.CLOSED)],
    ]


async def test_a_completed_close_handshake_ends_the_link_with_closed(
    link_paths: list[list[tuple[LinkPhase, LinkEvent, LinkPhase]]],
) -> None:
    server = MemoryServer()
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
    assert server.connections[0].close_code == 1000
    assert link_paths[0][-1] == (P.CLOSING, L.CLOSED, P.CLOSED)


# -- the clock -----------------------------------------------------------------------------------------------


async def test_max_elapsed_gives_up_after_that_much_loop_time() -> None:
    server = MemoryServer()
    server.refuse(times=None)
    client, _ = make_client(
        server, reconnect=Reconnect(initial_delay=1.0, max_delay=1.0, jitter=0.0, max_elapsed=10.0)
    )
    await client.start()
    try:
        failure = await wait_closed(client, timeout=60.0)
    finally:
        await client.close()
    assert isinstance(failure, GaveUpError)
    assert 10 <= len(server.handshakes) <= 12


async def test_stats_ages_follow_the_loop_clock() -> None:
    server = MemoryServer(pong_delay=0.1)
    client, events = make_client(server)
    async with client:
        await events.wait_for(Connected)
        server.connections[0].send("hello")
        await asyncio.sleep(INTERVAL + 1.0)  # the ping at 5 s answered at 5.1 s
        stats = client.stats
    assert stats.messages_in == 1
    assert stats.seconds_since_last_inbound == pytest.approx(INTERVAL + 1.0)
    assert stats.last_rtt_age == pytest.approx(0.9)
