"""The chaos soak: a short run in the suite, and the soak's own checks shown to catch what they claim to."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import pytest
from websockets.asyncio.server import ServerConnection

from wsclient import (
    Client,
    ClientConfig,
    Connection,
    Disconnected,
    Heartbeat,
    Message,
    Reconnect,
    SequenceGap,
)
from wsclient.testing import FeedServer
from wsclient.testing.soak import (
    FAULT_KINDS,
    ResourceFigures,
    _Soak,
    default_soak_config,
    run_soak,
)

from .conftest import Recorder, TestServer, poll_until
from .test_client import fast_config

SEED = 5


async def test_short_chaos_soak(caplog: pytest.LogCaptureFixture) -> None:
    """~30 s of every fault kind (each at least once); every promise of the client is checked."""
    # Keep pytest's log capture out of the memory figures: it keeps every record (tracebacks and
    # their frames included) for the report, which would read as growth. The soak checks behaviour.
    caplog.set_level(logging.CRITICAL, logger="wsclient")
    report = await run_soak(30.0, SEED, calm=(0.4, 1.0))
    print(report.format())
    failures = report.failures
    assert failures == [], report.format()
    assert set(report.faults) == set(FAULT_KINDS), report.format()
    # Every fault but the latency spike kills the connection; each must have been survived.
    assert report.reconnects >= sum(report.faults.values()) - report.faults["latency"], report.format()
    assert report.peak_connections == 1
    assert report.gaps_at_reconnect > 0 and report.client_gaps_reported == report.gaps_at_reconnect
    # 3 streams at 20/s for 30 s, less the outages: a quarter of it is a floor even on a loaded machine.
    assert report.stream_messages > 0.25 * 3 * 20 * 30
    assert report.sends_delivered > 0.5 * report.sends
    # Outages outlast the 25-message outbox (reject windows: >= 1 s Retry-After at 50 sends/s).
    assert report.sends_raised_full > 0
    assert (
        report.sends_delivered
        + report.sends_raised_lost
        + report.sends_raised_full
        + report.sends_dropped
        + report.sends_lost_in_flight
        == report.sends
    )
    assert len(report.recover_times) == sum(report.faults.values())
    assert report.max_recover <= report.recover_bound
    assert {figure.name for figure in report.resources} >= {"tasks", "open fds", "traced memory"}


# -- the checks themselves, fed by hand: each broken promise is reported -------------------------


def _soak() -> _Soak:
    return _Soak(
        10.0,
        0,
        config=default_soak_config(),
        rate=10.0,
        streams=(),
        send_interval=0.1,
        calm=(0.1, 0.2),
        slack=1.0,
        task_tolerance=3,
        fd_tolerance=3,
        memory_tolerance=1024,
    )


def _frame(kind: str, symbol: str, seq: int) -> str:
    return json.dumps({"type": kind, "symbol": symbol, "seq": seq})


def _ack(channel: str, symbol: str) -> str:
    return json.dumps({"type": "ack", "op": "subscribe", "channel": channel, "symbol": symbol})


async def test_soak_counts_gaps_at_reconnects_and_fails_gaps_within_a_connection() -> None:
    soak = _soak()
    for frame in (
        _ack("trades", "BTC-USD"),
        _frame("trade", "BTC-USD", 1),
        _frame("trade", "BTC-USD", 2),
        _ack("trades", "BTC-USD"),  # a new connection: the jump below is expected
        _frame("trade", "BTC-USD", 9),
        _frame("trade", "BTC-USD", 10),
    ):
        soak.on_frame(frame)
    assert soak.report.failures == []
    assert (soak.report.gaps_at_reconnect, soak.report.messages_missed) == (1, 6)

    soak.on_frame(_frame("trade", "BTC-USD", 12))
    soak.on_frame(_frame("trade", "BTC-USD", 12))
    assert soak.report.failures == [
        "('trades', 'BTC-USD'): seq gap 10 -> 12 within one connection",
        "('trades', 'BTC-USD'): seq went from 12 to 12 (duplicate or out of order)",
    ]


async def test_soak_accepts_losses_at_a_connection_boundary_only() -> None:
    soak = _soak()
    for outcome in (1, 1, 1, 1, 2, 1, 1):  # accepted, ..., note 4 raised ConnectionLostError
        soak.sent.append(outcome)
        soak.arrived.append(0)
        soak.dropped.append(0)
        soak.blame.append(1)
    soak.kinds.append("proxy_reset")
    soak.note_arrived(0)
    soak.note_arrived(1)
    soak.boundary = True  # the server saw the replayed subscriptions of a new connection
    soak.note_arrived(3)  # note 2 was lost in flight when the link died: counted, not a failure
    soak.note_arrived(5)  # note 4 raised: reported to the caller, not a failure
    assert soak.report.failures == []
    assert soak.report.sends_lost_in_flight == 1
    assert soak.report.lost_in_flight_by_fault == {"proxy_reset": 1}

    soak.sent.append(1)
    soak.arrived.append(0)
    soak.dropped.append(0)
    soak.blame.append(1)
    soak.note_arrived(7)  # note 6 missing with no new connection in between: silent loss
    soak.note_arrived(5)
    assert soak.report.failures == [
        "note 6 silently vanished in the middle of a connection",
        "note 5 arrived twice",
    ]


def test_resource_growth_beyond_tolerance_fails() -> None:
    assert ResourceFigures("tasks", 17, 19, 3).ok
    leak = ResourceFigures("open fds", 15, 21, 3)
    assert not leak.ok
    assert leak.format() == "open fds: first quarter 15, last quarter 21 (growth +6, allowed 3)"


class _Tick(Message):
    type: Literal["tick"]
    seq: int


async def test_gap_after_a_first_connection_that_never_opened_is_across_a_reconnect(
    make_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def ticks(server: TestServer, ws: ServerConnection) -> None:
        for seq in (1, 2) if server.total == 1 else (5, 6):
            await ws.send(json.dumps({"type": "tick", "seq": seq}))
        await ws.wait_closed()

    server = await make_server(ticks)
    client = Client(server.url, config=fast_config())
    seqs: list[int] = []
    gaps: list[SequenceGap] = []
    first_two = asyncio.Event()

    def on_tick(tick: _Tick) -> None:
        seqs.append(tick.seq)
        if len(seqs) == 2:
            first_two.set()

    client.on(_Tick, on_tick, seq_key=lambda tick: ("ticks", tick.seq))
    client.on_gap(gaps.append)

    attempts: list[Connection] = []

    @client.on_connect
    async def login(conn: Connection) -> None:
        attempts.append(conn)
        if len(attempts) == 1:
            async with asyncio.timeout(2):
                await first_two.wait()  # frames of this connection have been handled
            raise RuntimeError("login refused")

    async with client:
        await client.wait_open(3)
        await poll_until(lambda: len(seqs) == 4)
    assert seqs == [1, 2, 5, 6] and len(attempts) == 2
    assert gaps == [SequenceGap("ticks", 3, 5, "gap", True)]


async def test_server_close_while_a_ping_is_in_flight_keeps_its_close_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ClientConfig(
        heartbeat=Heartbeat(interval=0.05, timeout=5.0),  # the ping stays in flight
        reconnect=Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0),
        open_timeout=1.0,
        close_timeout=0.2,
    )
    async with FeedServer() as server:
        server.ignore_pings = True
        client = Client(server.url, config=config)
        recorder = Recorder(client)
        await client.start()
        try:
            await client.wait_open(2)
            await server.wait_until(lambda: server.pongs_suppressed >= 1)
            await server.close_all(1008, "policy violation")
            await recorder.wait_for(Disconnected, 1, timeout=2)
        finally:
            await client.close()
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.will_retry) == (1008, False), lost
    # Giving up is logged at ERROR; a connection task dying of a foreign exception must not be.
    assert not [r for r in caplog.records if r.name == "wsclient" and "task failed" in r.getMessage()]
