"""Venue limits: the message budget, the connect gate, the age rotation, per-attempt URL and headers.

The budgets are pure objects tested on their own; the client's use of them runs through the in-memory
transport on looptime's virtual clock, so every time asserted is loop time, exact whatever the load.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest

from wsclient import Client, ClientConfig, Connected, ConnectFailed, Disconnected, Heartbeat, Reconnect
from wsclient.budget import ConnectGate, SlidingWindow
from wsclient.config import VENUE_PROFILES, VenueLimits
from wsclient.errors import ConfigError, RefreshFailed
from wsclient.transport.memory import MemoryServer

URL = "ws://venue.test/ws"


def now() -> float:
    return asyncio.get_running_loop().time()


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside any window ``[t, t + window)``."""
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


# -- the sliding window, alone ---------------------------------------------------------------------------


def test_a_window_admits_exactly_its_limit_in_any_window() -> None:
    window = SlidingWindow(5, 1.0)
    clock = 0.0
    sent: list[float] = []
    for _ in range(200):  # bounded: 200 events asked as fast as the window lets them
        clock += window.delay(clock)
        window.record(clock)
        sent.append(clock)
        clock += 0.013
    assert most_in_any_window(sent, 1.0) == 5
    # ...and it wastes nothing: 200 events take ~200 / 5 seconds, not more.
    assert sent[-1] < 200 / 5 + 1


def test_the_reserve_keeps_slots_for_the_heartbeat() -> None:
    window = SlidingWindow(5, 1.0)
    for i in range(4):
        assert window.delay(float(i) / 100, reserve=1) == 0
        window.record(float(i) / 100)
    # Data sees 4 of 5 used: it waits for the first to leave the window; a reserved event does not.
    assert window.delay(0.05, reserve=1) == pytest.approx(0.95)
    assert window.delay(0.05) == 0
    window.record(0.05)
    assert window.used(0.05) == 5 and window.delay(0.05) == pytest.approx(0.95)


def test_the_margin_widens_the_window() -> None:
    window = SlidingWindow(1, 1.0, margin=0.1)
    window.record(0.0)
    assert window.delay(1.0) == pytest.approx(0.1)


@pytest.mark.parametrize(("args", "message"), [((0, 1.0), "limit"), ((1, 0.0), "window")])
def test_a_window_refuses_nonsense(args: tuple[int, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlidingWindow(*args)


# -- VenueLimits ---------------------------------------------------------------------------------------


def test_profiles_are_plain_data_and_build() -> None:
    for name in VENUE_PROFILES:
        assert isinstance(VenueLimits.profile(name), VenueLimits)
    binance = VenueLimits.binance_spot()
    assert binance.streams_per_connection == 1024 and binance.messages_per_second == 5
    assert binance.count_control_frames and binance.reserve == 2
    assert binance.connects_per_window == 300 and binance.connect_window == 300
    assert binance.max_connection_age == 24 * 3600
    assert VenueLimits.okx().subscribes_per_hour == 480 and VenueLimits.okx().connects_per_window == 3
    assert VenueLimits.bybit().connects_per_window == 500
    assert VenueLimits.bitfinex().streams_per_connection == 25
    assert VenueLimits.binance_spot(max_connection_age=60.0, rotation_overlap=5.0).max_connection_age == 60


def test_an_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="binance_spot, bitfinex, bybit, okx"):
        VenueLimits.profile("nasdaq")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages_per_second": 1, "count_control_frames": True}, "heartbeat_reserve"),
        ({"max_connection_age": 10.0, "rotation_overlap": 10.0}, "rotation_overlap"),
        ({"age_jitter": 1.0}, "age_jitter"),
        ({"streams_per_connection": 0}, "streams_per_connection"),
    ],
)
def test_bad_limits_fail_at_construction_naming_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VenueLimits(**kwargs)


def test_a_heartbeat_faster_than_its_reserve_is_refused() -> None:
    limits = VenueLimits(messages_per_second=5, count_control_frames=True)
    with pytest.raises(ValueError, match=r"heartbeat.interval \(0.5s\).*at least 1.1s"):
        ClientConfig(heartbeat=Heartbeat(interval=0.5, timeout=0.4), limits=limits)
    ClientConfig(heartbeat=Heartbeat(interval=2.0, timeout=1.0), limits=limits)


# -- the client within its budget (virtual time) ---------------------------------------------------------


def make_client(server: MemoryServer, limits: VenueLimits, **kwargs: Any) -> Client:
    return Client(
        kwargs.pop("url", URL),
        config=ClientConfig(
            heartbeat=kwargs.pop("heartbeat", Heartbeat(mode="off")),
            reconnect=kwargs.pop("reconnect", Reconnect(initial_delay=1.0, max_delay=4.0, jitter=0.0)),
            open_timeout=4.0,
            close_timeout=1.0,
            limits=limits,
            **kwargs.pop("config", {}),
        ),
        connector=server.connect,
        **kwargs,
    )


@pytest.mark.looptime
async def test_a_burst_of_sends_leaves_within_the_budget_in_order() -> None:
    server = MemoryServer()
    client = make_client(server, VenueLimits(messages_per_second=5, margin=0.1))
    async with client:
        await client.wait_open(10)
        conn = server.connections[0]
        for i in range(23):
            await client.send({"n": i})
        await conn.wait_received(23, timeout=60)
        stats = client.stats
    assert [json.loads(m)["n"] for m in conn.received] == list(range(23)), "order kept"
    assert most_in_any_window(conn.received_at, 1.0) == 5  # the venue's window; 1.1 s with the margin
    # No slower than the budget: 23 messages at 5 per 1.1 s take ~4 windows.
    assert conn.received_at[-1] - conn.received_at[0] <= 4 * 1.1 + 0.01
    assert stats.messages_out == 23 and stats.budget_waits > 0 and stats.dropped_out == 0


@pytest.mark.looptime
async def test_the_replay_is_paced_and_the_heartbeat_keeps_its_slot() -> None:
    server = MemoryServer()
    limits = VenueLimits(messages_per_second=5, count_control_frames=True, heartbeat_reserve=1, margin=0.0)
    client = make_client(server, limits, heartbeat=Heartbeat(interval=1.0, timeout=0.9))
    for i in range(30):
        client.subscribe({"op": "subscribe", "n": i})
    async with client:
        await client.wait_open(60)
        conn = server.connections[0]
        await conn.wait_received(30, timeout=60)
        await conn.wait_pings(5, timeout=60)
    sub_times = conn.received_at
    assert [json.loads(m)["n"] for m in conn.received] == list(range(30))
    # Data leaves the heartbeat one slot of five: 4 per second, never a burst...
    assert most_in_any_window(sub_times, 1.0) == 4
    # ...and the client's open only after the whole replay, paced: ~30 / 4 seconds.
    assert sub_times[-1] - sub_times[0] >= 7.0
    # The pings were never held back by the replay: one a second from the start.
    ping_times = conn.pings_at[:5]
    assert all(b - a <= 1.0 + 1e-6 for a, b in itertools.pairwise(ping_times)), ping_times
    assert ping_times[0] - conn.opened_at <= 1.0 + 1e-6
    assert most_in_any_window(sub_times + ping_times, 1.0) <= 5


@pytest.mark.looptime
async def test_the_connect_gate_spreads_attempts_and_never_shortens_the_backoff() -> None:
    server = MemoryServer()
    server.refuse(times=6)
    limits = VenueLimits(connects_per_window=2, connect_window=10.0, margin=0.0)
    client = make_client(server, limits, reconnect=Reconnect(initial_delay=1.0, max_delay=1.0, jitter=0.0))
    async with client:
        await client.wait_open(120)
    times = [h.at for h in server.handshakes]
    assert len(times) == 7
    assert most_in_any_window(times, 10.0) == 2
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times)), "the backoff is a floor"


@pytest.mark.looptime
async def test_a_shared_gate_holds_a_herd_of_clients_to_one_quota() -> None:
    server = MemoryServer()
    gate = ConnectGate(3, 1.0)
    clients = [make_client(server, VenueLimits(), connect_gate=gate) for _ in range(10)]
    for client in clients:
        await client.start()
    try:
        await server.wait_connections(10, timeout=30)
    finally:
        for client in clients:
            await client.close()
    times = [h.at for h in server.handshakes]
    assert len(times) == 10 and most_in_any_window(times, 1.0) == 3
    assert gate.attempts == 10 and gate.waits == 7
    assert max(times) - min(times) == pytest.approx(3.0)


@pytest.mark.looptime
async def test_a_connection_is_replaced_before_its_maximum_age() -> None:
    server = MemoryServer()
    limits = VenueLimits(max_connection_age=100.0, age_jitter=0.2, rotation_overlap=5.0)
    client = make_client(server, limits)
    client.subscribe("sub")
    events: list[Any] = []
    client.on_event(events.append)
    async with client:
        await client.wait_open(10)
        await server.wait_until(lambda: len(server.connections) >= 3 and not server.connections[1].open, 400)
        stats = client.stats
    first, second = server.connections[:2]
    # Replaced make-before-break before the venue's cut, at a point spread over the last 20 %:
    # rotation begins in [75, 95] s of age, the old link is gone within the overlap bound after.
    assert 75.0 <= second.opened_at - first.opened_at <= 95.0
    assert first.ended_at is not None and first.ended_at - second.opened_at <= 5.0 + 1.0
    assert first.ended_at - first.opened_at < 100.0 and first.close_code == 1000
    assert second.received == ["sub"], "the replacement was subscribed before it took over"
    assert not [e for e in events if isinstance(e, Disconnected)], "no loss to report"
    assert [e.reconnect for e in events if isinstance(e, Connected)][:3] == [False, True, True]
    assert stats.rotations >= 2 and server.peak_open == 2


# -- the URL and headers of each attempt --------------------------------------------------------------------


@pytest.mark.looptime
async def test_url_and_headers_are_asked_at_every_attempt_and_their_secrets_masked() -> None:
    server = MemoryServer()
    keys = iter(f"listenKey{n:02d}abcdefghijklmnop" for n in range(10))
    tokens = itertools.count(1)
    server.refuse(times=1)

    async def url() -> str:
        return f"ws://venue.test/ws/{next(keys)}"

    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer token-{next(tokens):04d}-secretvalue"}

    client = make_client(server, VenueLimits(), url=url, headers=headers)
    events: list[Any] = []
    client.on_event(events.append)
    async with client:
        await client.wait_open(10)
        server.connections[0].close(1001, "listenKey00abcdefghijklmnop expired")
        await server.wait_until(lambda: len(server.connections) == 2 and server.connections[1].open, 30)
    urls = [h.url for h in server.handshakes]
    assert urls == [f"ws://venue.test/ws/listenKey{n:02d}abcdefghijklmnop" for n in range(3)]
    assert [h.headers["Authorization"] for h in server.handshakes] == [
        f"Bearer token-{n:04d}-secretvalue" for n in (1, 2, 3)
    ]
    text = " ".join(repr(e) for e in events) + repr(client)
    assert "listenKey0" not in text and "secretvalue" not in text, text
    assert "<url from" in repr(client)


@pytest.mark.looptime
async def test_a_failing_refresh_is_a_connect_failure_with_its_cause() -> None:
    server = MemoryServer()
    calls = itertools.count(1)

    def url() -> str:
        if next(calls) <= 2:
            raise OSError("listenKey endpoint unreachable")
        return URL

    client = make_client(server, VenueLimits(), url=url)
    failures: list[ConnectFailed] = []
    client.on_event(lambda e: failures.append(e) if isinstance(e, ConnectFailed) else None)
    async with client:
        await client.wait_open(30)
    assert [f.will_retry for f in failures] == [True, True]
    assert all("URL function" in f.reason and "unreachable" in f.reason for f in failures), failures
    assert len(server.handshakes) == 1
    assert issubclass(RefreshFailed, Exception)


@pytest.mark.looptime
async def test_subscriptions_count_against_the_hourly_budget_replayed_or_live() -> None:
    server = MemoryServer()
    client = make_client(server, VenueLimits(subscribes_per_hour=3, margin=0.0))
    client.subscribe("sub-1")
    client.subscribe("sub-2")
    async with client:
        await client.wait_open(10)
        conn = server.connections[0]
        await client.send("data")  # not a subscription: not counted
        client.subscribe("sub-3")
        client.subscribe("sub-4")  # the fourth within the hour waits for the first to age out
        await conn.wait_received(5, timeout=4000)
    sent = dict(zip(conn.received, conn.received_at, strict=True))
    assert list(sent) == ["sub-1", "sub-2", "data", "sub-3", "sub-4"]
    assert sent["sub-3"] - sent["sub-1"] < 1.0
    assert sent["sub-4"] - sent["sub-1"] == pytest.approx(3600.0)
