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
from wsclient.testing.feed import Handshake
from wsclient.testing.soak import (
    FAULT_KINDS,
    ResourceFigures,
    _Soak,
    default_soak_config,
    main,
    run_soak,
)

from .conftest import Recorder, TestServer, poll_until
from .test_client import fast_config

SEED = 5


@pytest.mark.serial
async def test_short_chaos_soak(caplog: pytest.LogCaptureFixture) -> None:
    """~30 s of every fault kind (each at least once); every promise of the client is checked."""
    # Keep pytest's log capture out of the memory figures: it keeps every record (tracebacks and
    # their frames included) for the report, which would read as growth. The soak checks behaviour.
    caplog.set_level(logging.CRITICAL, logger="wsclient")
    # Short calm periods: eleven kinds of fault must all fit in the ~24 s before the calm tail.
    # A slack of 4 s (not the default 3): on a loaded machine the flood itself slows, and the pongs
    # take longer to pile up past the client's limit; a link stuck OPEN stays up for ever anyway.
    report = await run_soak(30.0, SEED, calm=(0.2, 0.6), slack=4.0)
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
        + report.sends_reported_sent_never_read
        == report.sends
    )
    assert report.sends_reported_sent_never_read == 0
    assert len(report.recover_times) == sum(report.faults.values())
    assert report.max_recover <= report.recover_bound
    # Every fault but the latency spike struck a live link, which the client gave up in time.
    assert set(report.link_end_times) == set(FAULT_KINDS) - {"latency"}, report.format()
    assert report.stuck_open == 0 and report.max_link_end <= report.stuck_bound
    assert report.redirects_followed == report.faults["redirect"] and report.credentials_leaked == {}
    assert report.ping_flood_bytes > 0 and len(report.stall_pads) == report.faults["stall"]
    # The stalls made send() wait on backpressure.
    assert report.sends_blocked > 0
    assert {figure.name for figure in report.resources} >= {"tasks", "open fds", "traced memory"}
    # Memory was sampled before and after the faults: all of them (perhaps the very last one
    # aside, if its link was still being torn down in the last calm period) lie in between.
    assert sum(report.faults_sampled.values()) >= sum(report.faults.values()) - 1, report.format()


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


class _Clock:
    """A hand-driven clock for the soak's timings."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lost(code: int | None = 1006) -> Disconnected:
    return Disconnected(1, code, "connection closed", True, 0.1)


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


# -- the checks of the new faults, fed by hand --------------------------------------------------


def _handshake(port: int, status: int, *headers: tuple[str, str]) -> Handshake:
    items = (("Host", f"127.0.0.1:{port}"), ("X-Client-Id", "soak-0"), *headers)
    return Handshake(port=port, path="/stream", key="soak-0", headers=items, status=status)


def test_redirect_check_fails_a_credential_that_reached_the_other_origin() -> None:
    soak = _soak()
    credentials = (("Authorization", "Bearer soak-secret-0"), ("X-Api-Key", "soak-secret-0"))
    redirected = _handshake(8000, 307, *credentials)  # the origin the credentials belong to
    # A client that followed the redirect and dropped the credentials: nothing to report.
    soak.judge_redirect([redirected, _handshake(9000, 101)], target=9000)
    assert soak.report.failures == []
    assert (soak.report.redirects_followed, soak.report.credentials_leaked) == (1, {})

    # One that stripped only Authorization (what websockets does on its own); names are
    # case-insensitive.
    leaky = _handshake(9000, 101, ("x-api-key", "soak-secret-0"))
    soak.judge_redirect([redirected, leaky], target=9000)
    assert soak.report.credentials_leaked == {"X-Api-Key": 1}
    assert soak.report.failures == [
        "credential header X-Api-Key reached the redirect target, another origin (port 9000, HTTP 101)"
    ]

    # A client that never got there is counted as not following (its recovery check fails apart).
    soak.judge_redirect([redirected], target=9000)
    assert soak.report.redirects_followed == 2


async def test_close_no_fin_check_bounds_the_link_and_wants_the_servers_code() -> None:
    soak = _soak()
    clock = soak.clock = _Clock()
    bound = soak.stuck_bound
    assert bound == pytest.approx(0.5 + 0.25 + 0.5 + 1.0)  # close_timeout + interval + timeout + slack

    # Aborted after the close timeout, with the server's code: fine.
    soak.strike_link("close_no_fin", expect_code=1011)
    clock.now += 0.55
    soak.on_event(_lost(1011))
    assert await soak.link_lost()
    soak.end_strike()
    assert soak.report.failures == []

    # Reported as a plain drop: the close frame's code was lost on the way.
    soak.strike_link("close_no_fin", expect_code=1001)
    clock.now += 0.55
    soak.on_event(_lost(1006))
    soak.end_strike()
    assert soak.report.failures == [
        "a link closed by the server with 1001 (no TCP close after it) was reported lost with code 1006"
    ]

    # Given up only long after the close timeout: stuck OPEN, though it ended in the end.
    soak.report.failures.clear()
    soak.strike_link("close_no_fin", expect_code=1001)
    clock.now += bound + 2.0
    soak.on_event(_lost(1001))
    soak.end_strike()
    assert soak.report.stuck_open == 1
    [stuck] = soak.report.failures
    assert stuck.startswith(
        f"stuck OPEN: the link was lost only {bound + 2.0:.2f}s after a close_no_fin struck it "
        f"(bound {bound:.2f}s: close_timeout + interval + timeout + slack); recent events: ["
    )
    assert soak.report.link_end_times["close_no_fin"] == pytest.approx([0.55, 0.55, bound + 2.0])


async def test_ping_flood_check_ends_a_link_the_client_never_gives_up() -> None:
    soak = _soak()
    clock = soak.clock = _Clock()
    calls: list[str] = []

    async def end_link() -> None:
        calls.append("ended by the soak")

    soak.strike_link("ping_flood")
    assert soak.strike is not None
    soak.strike.detail = "8 MiB"
    clock.now += soak.stuck_bound + 0.01  # the bound has passed and the client is still OPEN
    await soak.until_link_lost(end_link, lambda: calls.append("lifted"))
    assert calls == ["ended by the soak", "lifted"]
    assert soak.report.stuck_open == 1
    assert soak.report.failures == [
        f"stuck OPEN: the link was still up {soak.stuck_bound + 0.01:.2f}s after a ping_flood (8 MiB) "
        f"struck it (bound {soak.stuck_bound:.2f}s: close_timeout + interval + timeout + slack); "
        "recent events: []"
    ]

    # A client that closes the flooded link itself (1008, peer not reading) in time.
    calls.clear()
    soak.strike_link("ping_flood")
    clock.now += 1.0
    soak.on_event(_lost(1008))
    await soak.until_link_lost(end_link, lambda: calls.append("lifted"))
    assert calls == ["lifted"]
    assert soak.report.stuck_open == 1
    assert soak.report.link_end_times["ping_flood"] == pytest.approx([soak.stuck_bound + 0.01, 1.0])


class _DyingLinkClient(Client):
    """A client whose ``send()`` of some notes returns normally although its link died meanwhile,
    the way a send waiting on backpressure returns when the socket under it is aborted."""

    def __init__(self, soak: _Soak, die_during: set[int], last: int, stop: asyncio.Event) -> None:
        super().__init__("ws://127.0.0.1:9/stream")
        self.soak = soak
        self.die_during = die_during
        self.last = last
        self.stop = stop
        self.messages: list[dict[str, object]] = []

    async def send(self, message: object) -> None:
        assert isinstance(message, dict)
        self.messages.append(message)
        n = message["n"]
        assert isinstance(n, int)
        await asyncio.sleep(0)  # the send waits on the socket...
        if n in self.die_during:
            self.soak.on_event(_lost())  # ...and the link dies meanwhile
        if n == self.last:
            self.stop.set()


async def test_stall_check_catches_a_send_reported_sent_across_a_lost_link() -> None:
    soak = _soak()
    soak.send_interval = 0.0
    soak.kinds.append("stall")
    soak.exposure = 1
    soak.pad = "x" * 64
    stop = asyncio.Event()
    client = _DyingLinkClient(soak, die_during={1, 4}, last=5, stop=stop)
    async with asyncio.timeout(2):
        await soak.sender(client, stop)
    assert len(soak.sent) == 6 and all(m["pad"] == "x" * 64 for m in client.messages)
    assert soak.report.sends_across_disconnect == 2
    assert soak.report.failures == []

    soak.note_arrived(0)
    soak.boundary = True  # the server saw the next connection's subscriptions
    soak.note_arrived(3)  # note 1 returned across the loss and vanished; note 2 was lost in flight
    soak.note_arrived(4)  # note 4 also returned across a loss, but it did arrive: it was true
    soak.tally_sends()  # note 5, accepted after the faults, never arrived
    assert soak.report.sends_reported_sent_never_read == 1
    assert soak.report.never_read_by_fault == {"stall": 1}
    assert soak.report.sends_lost_in_flight == 1
    assert soak.report.failures == [
        "note 1: send() returned normally although the link died while it was in progress "
        "(a Disconnected during the send, exposed to stall), and the server never read it",
        "note 5 was accepted after the faults stopped and never arrived",
    ]
    assert "sends reported sent that the server never read: 1 (stall 1)" in soak.report.format()


def test_faults_can_be_chosen_but_not_invented(capsys: pytest.CaptureFixture[str]) -> None:
    assert FAULT_KINDS[-4:] == ("redirect", "close_no_fin", "ping_flood", "stall")
    with pytest.raises(ValueError, match="faults must be a non-empty selection"):
        _Soak(
            1.0,
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
            faults=("stall", "earthquake"),  # type: ignore[arg-type]
        )
    with pytest.raises(SystemExit):
        main(["--faults", "stall,earthquake"])
    assert "unknown fault kind(s) ['earthquake']" in capsys.readouterr().err
