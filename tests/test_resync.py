"""Resync: a local order book built from a snapshot plus deltas stays equal to the venue's.

Socket-free and deterministic: a seeded reference venue produces the deltas and serves snapshots,
the application side rebuilds the book through ``on_snapshot``/``on_delta`` and checks, delta by
delta, that it is never handed one that does not continue its book. Backoff runs at realistic
delays (1 s, 2 s, … 30 s, no jitter) on looptime's virtual clock: every time asserted is loop time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from wsclient import Message, Reconnect
from wsclient.logs import LogLimiter
from wsclient.resync import (
    BufferOverflow,
    CallbackFailed,
    GapDetected,
    Resync,
    ResyncFailed,
    ResyncOutcome,
    Synced,
)
from wsclient.routing import Router

pytestmark = pytest.mark.looptime

BACKOFF = Reconnect(initial_delay=1.0, max_delay=30.0, jitter=0.0, reset_after=60.0)
EVERY = 0.1  # seconds between two deltas of a stream
LATENCY = 0.25  # seconds a snapshot takes to arrive

Levels = dict[int, int]  # price -> quantity
Changes = tuple[tuple[int, int], ...]  # (price, quantity); quantity 0 removes the level


def now() -> float:
    return asyncio.get_running_loop().time()


def apply(levels: Levels, changes: Iterable[tuple[int, int]]) -> None:
    for price, qty in changes:
        if qty:
            levels[price] = qty
        else:
            levels.pop(price, None)


# -- the reference venue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Depth:
    """A Binance-style diff. depth event: ids ``U..u``."""

    s: str
    U: int
    u: int
    b: Changes
    a: Changes


@dataclass(frozen=True)
class Tick:
    """A delta of a venue with one sequence number per message that names its predecessor."""

    s: str
    seq: int
    prev: int
    b: Changes
    a: Changes


@dataclass(frozen=True)
class Snap:
    lastUpdateId: int  # the venue's field name
    bids: Levels
    asks: Levels


class Venue:
    """A deterministic order book and its delta stream; remembers its state at every update id.

    ``kind="depth"``: Binance deltas covering 1 to 3 ids each. ``kind="contiguous"``: one id per
    message, consecutive. ``kind="pointer"``: one id per message, increasing by 1 to 4, each message
    carrying the previous id.
    """

    def __init__(
        self, symbol: str = "BTCUSDT", seed: int = 7, start: int = 1_000, kind: str = "depth"
    ) -> None:
        self.symbol = symbol
        self.kind = kind
        self._rng = random.Random(seed)
        self.update_id = start
        self.bids: Levels = {100 - i: 5 for i in range(1, 6)}
        self.asks: Levels = {100 + i: 5 for i in range(1, 6)}
        self._states = {start: (dict(self.bids), dict(self.asks))}

    def step(self) -> Any:
        rng = self._rng
        span = rng.randint(1, 3) if self.kind == "depth" else 1
        b = tuple((rng.randint(90, 99), rng.choice((0, rng.randint(1, 9)))) for _ in range(span))
        a = tuple((rng.randint(101, 110), rng.choice((0, rng.randint(1, 9)))) for _ in range(span))
        apply(self.bids, b)
        apply(self.asks, a)
        prev = self.update_id
        self.update_id += span if self.kind != "pointer" else rng.randint(1, 4)
        self._states[self.update_id] = (dict(self.bids), dict(self.asks))
        if self.kind == "depth":
            return Depth(self.symbol, prev + 1, self.update_id, b, a)
        return Tick(self.symbol, self.update_id, prev, b, a)

    def snapshot(self, at: int | None = None) -> Snap:
        uid = self.update_id if at is None else at
        bids, asks = self._states[uid]
        return Snap(uid, dict(bids), dict(asks))

    def restart_counter(self, at: int) -> None:
        """The venue restarts its update ids from ``at`` (the book is kept)."""
        self.update_id = at
        self._states[at] = (dict(self.bids), dict(self.asks))

    @property
    def book(self) -> tuple[Levels, Levels]:
        return self.bids, self.asks


@dataclass
class Step:
    """How the snapshot endpoint answers one request (default: the current state)."""

    latency: float = LATENCY
    at: int | None = None
    error: BaseException | None = None
    hang: bool = False


class Rest:
    """The snapshot endpoint: serves a venue's state as of the request, ``latency`` seconds later."""

    def __init__(self, *venues: Venue, script: Iterable[Step] = (), default: Step | None = None) -> None:
        self.venues = {v.symbol: v for v in venues}
        self.script = deque(script)
        self.default = default or Step()
        self.calls: list[tuple[float, str]] = []
        self.cancelled = 0

    def times(self, symbol: str | None = None) -> list[float]:
        return [t for t, s in self.calls if symbol is None or s == symbol]

    async def __call__(self, symbol: str) -> Snap:
        self.calls.append((now(), symbol))
        step = self.script.popleft() if self.script else self.default
        snap = self.venues[symbol].snapshot(step.at)
        try:
            if step.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(step.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if step.error is not None:
            raise step.error
        return snap


# -- the application side ------------------------------------------------------------------------------


@dataclass
class App:
    """Local books built from the callbacks; records what it was handed and any broken promise."""

    rule: Literal["depth", "contiguous", "pointer"] = "depth"
    books: dict[str, tuple[Levels, Levels]] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    outcomes: list[ResyncOutcome] = field(default_factory=list)
    fail_on: set[tuple[str, int]] = field(default_factory=set)
    """(stream, last id) of deltas whose application raises halfway through."""

    def on_snapshot(self, stream: str, snap: Snap) -> None:
        self.books[stream] = (dict(snap.bids), dict(snap.asks))
        self.last[stream] = snap.lastUpdateId
        self.calls.append(("snapshot", stream, snap.lastUpdateId))

    def on_delta(self, stream: str, delta: Any) -> None:
        first, last = (delta.U, delta.u) if self.rule == "depth" else (delta.seq, delta.seq)
        prev = self.last.get(stream)
        if prev is None:
            self.violations.append(f"{stream}: delta {first}..{last} before any snapshot")
        elif not (
            first <= prev + 1 <= last
            if self.rule == "depth"
            else first == prev + 1
            if self.rule == "contiguous"
            else delta.prev == prev
        ):
            self.violations.append(f"{stream}: delta {first}..{last} after {prev}")
        bids, asks = self.books[stream]
        apply(bids, delta.b)
        if (stream, last) in self.fail_on:
            self.fail_on.discard((stream, last))
            raise RuntimeError("boom")
        apply(asks, delta.a)
        self.last[stream] = last
        self.calls.append(("delta", stream, last))

    def of(self, kind: type[Any], stream: str | None = None) -> list[Any]:
        return [o for o in self.outcomes if isinstance(o, kind) and (stream is None or o.stream == stream)]

    def snapshots(self, stream: str) -> int:
        return sum(1 for kind, s, _ in self.calls if kind == "snapshot" and s == stream)


def depth_resync(app: App, rest: Rest, **options: Any) -> Resync[Depth, Snap, str]:
    options.setdefault("backoff", BACKOFF)
    options.setdefault("first_last", lambda d: (d.U, d.u))
    options.setdefault("on_snapshot", app.on_snapshot)
    options.setdefault("on_delta", app.on_delta)
    options.setdefault("on_outcome", app.outcomes.append)
    return Resync(
        stream=lambda d: d.s,
        snapshot=rest,
        snapshot_seq=lambda s: s.lastUpdateId,
        **options,
    )


async def feed(
    resync: Resync[Any, Any, Any],
    venue: Venue,
    count: int,
    *,
    skip: Iterable[int] = (),
    twice: bool = False,
    every: float = EVERY,
) -> list[Any]:
    """``count`` venue steps, one every ``every`` seconds; ``skip``: indexes lost on the way."""
    lost = set(skip)
    deltas = []
    for i in range(count):
        delta = venue.step()
        deltas.append(delta)
        if i not in lost:
            assert resync(delta) is None
            if twice:
                resync(delta)
        await asyncio.sleep(every)
    return deltas


def assert_in_sync(app: App, resync: Resync[Any, Any, Any], *venues: Venue) -> None:
    assert app.violations == []
    for venue in venues:
        assert resync.status(venue.symbol) == "synced"
        assert resync.last_applied(venue.symbol) == venue.update_id
        assert app.books[venue.symbol] == venue.book


# -- synchronising -------------------------------------------------------------------------------------


async def test_initial_sync_applies_deltas_that_arrived_during_the_fetch() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue)
    resync = depth_resync(app, rest)
    t0 = now()
    deltas = await feed(resync, venue, 30)

    # The first delta starts the resync; the snapshot (state after it) lands at 0.25 s, after the
    # deltas of 0.1 s and 0.2 s: the first buffered one is stale, the other two are applied.
    assert rest.times() == [t0]
    assert app.outcomes == [Synced("BTCUSDT", deltas[0].u, 2, 1)]
    assert app.calls[:3] == [("snapshot", "BTCUSDT", deltas[0].u), ("delta", "BTCUSDT", deltas[1].u),
                             ("delta", "BTCUSDT", deltas[2].u)]  # fmt: skip
    assert_in_sync(app, resync, venue)
    stats = resync.stats
    assert (stats.snapshots, stats.synced, stats.applied, stats.stale, stats.gaps) == (1, 1, 29, 1, 0)
    assert resync.streams == ("BTCUSDT",)
    assert resync.tasks == 0
    await resync.aclose()


async def test_status_and_last_applied_follow_the_stream() -> None:
    venue, app = Venue(), App()
    resync = depth_resync(app, Rest(venue))
    assert resync.status("BTCUSDT") is None
    first = venue.step()
    resync(first)
    assert resync.status("BTCUSDT") == "syncing"
    assert resync.last_applied("BTCUSDT") is None
    assert resync.tasks == 1
    await asyncio.sleep(1)
    assert resync.status("BTCUSDT") == "synced"
    assert resync.last_applied("BTCUSDT") == first.u
    assert resync.tasks == 0
    await resync.aclose()


async def test_gap_mid_stream_is_detected_and_resynchronised() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue)
    resync = depth_resync(app, rest)
    deltas = await feed(resync, venue, 60, skip=(15, 16, 17))

    [gap] = app.of(GapDetected)
    assert gap == GapDetected("BTCUSDT", deltas[14].u + 1, deltas[18].U)
    assert resync.stats.gaps == 1
    # The gap came 1.55 s after the stream synced, sooner than reset_after: the snapshot waits the
    # first backoff delay (1 s) instead of going out at once.
    gap_time = rest.times()[0] + 18 * EVERY
    assert rest.times()[1] == pytest.approx(gap_time + 1.0)
    assert [type(o) for o in app.outcomes] == [Synced, GapDetected, Synced]
    # A fresh snapshot came between the last delta before the gap and the next one applied.
    kinds = [kind for kind, _, uid in app.calls if uid > deltas[14].u]
    assert kinds[0] == "snapshot"
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_a_stream_stable_for_reset_after_resyncs_at_once() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue)
    resync = depth_resync(app, rest)
    await feed(resync, venue, 5)
    await feed(resync, venue, 65, every=1.0)  # synced for more than reset_after (60 s)
    gap_time = now()
    await feed(resync, venue, 20, skip=(0,))  # the delta after the lost one arrives at once
    assert rest.times()[1] == pytest.approx(gap_time + EVERY)
    # A second gap soon after: the next snapshot waits 1 s (the series started afresh).
    second = now()
    await feed(resync, venue, 30, skip=(0,))
    assert rest.times()[2] == pytest.approx(second + EVERY + 1.0)
    assert len(app.of(GapDetected)) == 2
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_snapshot_older_than_the_buffered_deltas_is_fetched_again() -> None:
    venue, app = Venue(), App()
    for _ in range(5):  # updates before the application subscribed
        venue.step()
    old = venue.snapshot(venue.update_id).lastUpdateId
    for _ in range(5):
        venue.step()
    rest = Rest(venue, script=[Step(at=old)])  # e.g. a lagging replica behind a load balancer
    resync = depth_resync(app, rest)
    t0 = now()
    await feed(resync, venue, 40)

    assert rest.times() == [t0, pytest.approx(t0 + LATENCY + 1.0)]
    [synced] = app.of(Synced)
    assert synced.attempts == 2
    assert synced.snapshot_seq > old
    assert app.calls[0][0] == "snapshot"
    assert app.snapshots("BTCUSDT") == 1  # the old snapshot never reached the application
    assert resync.stats.stale_snapshots == 1
    assert resync.stats.snapshots == 2
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_snapshot_that_keeps_failing_gives_up_then_pauses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsclient.resync")
    venue, app = Venue(), App()
    rest = Rest(venue, default=Step(error=ConnectionError("HTTP 503 Service Unavailable")))
    resync = depth_resync(app, rest, log_limiter=LogLimiter(burst=3, window=3600))
    t0 = now()
    resync(venue.step())
    await asyncio.sleep(20)

    # Five fetches spaced by the backoff: 1, 2, 4, 8 s (plus each request's 0.25 s).
    gaps = [round(b - a - LATENCY, 6) for a, b in zip(rest.times(), rest.times()[1:], strict=False)]
    assert rest.times()[0] == t0
    assert gaps == [1.0, 2.0, 4.0, 8.0]
    reason = "snapshot failed: ConnectionError: HTTP 503 Service Unavailable"
    assert app.outcomes == [ResyncFailed("BTCUSDT", 5, reason, 30.0)]
    assert resync.status("BTCUSDT") == "failed"
    assert resync.last_applied("BTCUSDT") is None
    assert resync.tasks == 0
    assert (resync.stats.snapshot_errors, resync.stats.failed) == (5, 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # the rest were suppressed by the limiter
    assert "attempt 1 of 5" in warnings[0].getMessage()
    assert any(
        r.levelno == logging.ERROR and "failed after 5 attempts" in r.getMessage() for r in caplog.records
    )

    # During the pause (max_delay after giving up) deltas are dropped and nothing is fetched.
    failed_at = rest.times()[-1] + LATENCY
    await feed(resync, venue, 10, every=1.0)
    assert len(rest.calls) == 5
    assert resync.stats.dropped_failed == 10
    # The endpoint recovers; the first delta after the pause starts a new resync, fetched at once.
    rest.default = Step()
    await asyncio.sleep(failed_at + 30.0 - now())
    restart = now()
    await feed(resync, venue, 10)
    assert rest.times()[5] == restart
    assert app.of(Synced) == [Synced("BTCUSDT", app.of(Synced)[0].snapshot_seq, 2, 1)]
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_snapshot_that_hangs_times_out() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue, default=Step(hang=True))
    resync = depth_resync(app, rest, snapshot_timeout=5.0, max_attempts=2)
    t0 = now()
    resync(venue.step())
    await asyncio.sleep(60)
    assert rest.times() == [t0, t0 + 6.0]
    assert rest.cancelled == 2
    assert app.outcomes == [ResyncFailed("BTCUSDT", 2, "snapshot timed out after 5s", 30.0)]
    await resync.aclose()


# -- dropping ------------------------------------------------------------------------------------------


async def test_duplicates_are_dropped_and_counted() -> None:
    """The same stream over two links (a connection rotation): every delta arrives twice."""
    venue, app = Venue(), App()
    resync = depth_resync(app, Rest(venue))
    deltas = await feed(resync, venue, 30, twice=True)
    for delta in deltas[10:20]:  # and a late replay of older ones
        resync(delta)

    assert [type(o) for o in app.outcomes] == [Synced]
    # Both copies of the first delta are at or below the snapshot (stale); every other delta was
    # applied once and dropped once, plus the ten replayed.
    assert (resync.stats.stale, resync.stats.duplicates, resync.stats.applied) == (2, 29 + 10, 29)
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_buffer_overflow_drops_the_buffer_and_restarts() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue, script=[Step(latency=2.05)])  # the first snapshot is slow
    resync = depth_resync(app, rest, max_buffer=5)
    await feed(resync, venue, 60)

    overflows = app.of(BufferOverflow)
    assert overflows
    assert all(o == BufferOverflow("BTCUSDT", 5) for o in overflows)
    assert resync.stats.overflows == len(overflows)
    assert resync.stats.overflow_dropped == 5 * len(overflows)
    # The slow snapshot was older than the fresh buffer; the next one synced the stream.
    [synced] = app.of(Synced)
    assert synced.attempts == 2
    assert synced.deltas_applied_from_buffer <= 5
    assert resync.stats.stale_snapshots == 1
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_counter_reset_is_taken_for_a_gap_after_max_stale_run() -> None:
    venue, app = Venue(), App()
    resync = depth_resync(app, Rest(venue), max_stale_run=3)
    await feed(resync, venue, 10)
    last = resync.last_applied("BTCUSDT")
    assert last is not None
    stale = resync.stats.stale
    venue.restart_counter(at=10)  # a venue restart: ids fall back, the book stays
    deltas = await feed(resync, venue, 30)

    # The third delta in a row at or below the book's id (here: below its snapshot) is the last.
    [gap] = app.of(GapDetected)
    assert gap == GapDetected("BTCUSDT", last + 1, deltas[2].U)
    assert gap.received < gap.expected
    assert resync.stats.stale >= stale + 3
    assert_in_sync(app, resync, venue)
    await resync.aclose()


# -- other venues --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("contiguous", lambda last, m: m.seq == last + 1),
        ("pointer", lambda last, m: m.prev == last),  # OKX/Deribit style: prevSeqId / prev_change_id
    ],
)
async def test_custom_continuity_rule(kind: Literal["contiguous", "pointer"], rule: Any) -> None:
    venue, app = Venue(kind=kind, seed=11), App(rule=kind)
    rest = Rest(venue)
    resync: Resync[Tick, Snap, str] = Resync(
        stream=lambda m: m.s,
        snapshot=rest,
        snapshot_seq=lambda s: s.lastUpdateId,
        first_last=lambda m: (m.seq, m.seq),
        continues=rule,
        on_snapshot=app.on_snapshot,
        on_delta=app.on_delta,
        on_outcome=app.outcomes.append,
        backoff=BACKOFF,
    )
    ticks = await feed(resync, venue, 60, skip=(20,))
    assert app.of(GapDetected) == [GapDetected("BTCUSDT", ticks[19].seq + 1, ticks[21].seq)]
    assert len(app.of(Synced)) == 2
    assert_in_sync(app, resync, venue)
    await resync.aclose()


# -- concurrency and failures --------------------------------------------------------------------------


async def test_aclose_cancels_a_pending_snapshot_and_leaves_no_task() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue, default=Step(hang=True))
    resync = depth_resync(app, rest, snapshot_timeout=None)
    resync(venue.step())
    await asyncio.sleep(1)
    assert len(rest.calls) == 1
    assert resync.tasks == 1

    await resync.aclose()
    assert rest.cancelled == 1
    assert resync.tasks == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert resync.status("BTCUSDT") is None
    await resync.aclose()  # idempotent
    resync(venue.step())  # ignored once closed
    assert resync.tasks == 0
    assert resync.streams == ()
    assert app.calls == []


async def test_async_with_closes() -> None:
    venue, app = Venue(), App()
    rest = Rest(venue, default=Step(hang=True))
    async with depth_resync(app, rest) as resync:
        resync(venue.step())
        await asyncio.sleep(0.1)
    assert rest.cancelled == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_forget_cancels_the_stream_and_a_later_delta_starts_over() -> None:
    btc, eth, app = Venue(), Venue("ETHUSDT", seed=8), App()
    rest = Rest(btc, eth, script=[Step(hang=True)])
    resync = depth_resync(app, rest)
    resync(btc.step())
    resync(eth.step())
    await asyncio.sleep(1)
    assert resync.status("ETHUSDT") == "synced"
    assert resync.status("BTCUSDT") == "syncing"
    resync.forget("BTCUSDT")
    resync.forget("nothing")  # unknown streams are fine
    await asyncio.sleep(0)
    assert rest.cancelled == 1
    assert resync.status("BTCUSDT") is None
    assert resync.streams == ("ETHUSDT",)
    await feed(resync, btc, 10)
    assert [o.stream for o in app.of(Synced)] == ["ETHUSDT", "BTCUSDT"]
    assert app.books["BTCUSDT"] == btc.book
    resync.forget("ETHUSDT")  # a synced stream: no task to cancel
    assert resync.streams == ("BTCUSDT",)
    assert resync.tasks == 0
    await resync.aclose()


async def test_callbacks_may_forget_their_own_stream() -> None:
    venue, app = Venue(), App()
    forget_on_snapshot = True

    def on_snapshot(stream: str, snap: Snap) -> None:
        nonlocal forget_on_snapshot
        app.on_snapshot(stream, snap)
        if forget_on_snapshot:
            forget_on_snapshot = False
            resync.forget(stream)

    def on_delta(stream: str, delta: Depth) -> None:
        app.on_delta(stream, delta)
        if delta.u == stop_at:
            resync.forget(stream)
            raise RuntimeError("unsubscribed")

    stop_at = -1
    resync = depth_resync(app, Rest(venue), on_snapshot=on_snapshot, on_delta=on_delta)
    await feed(resync, venue, 5)  # the first snapshot forgets the stream: nothing else is applied
    assert app.calls == [("snapshot", "BTCUSDT", app.calls[0][2])]
    assert app.outcomes == []
    await feed(resync, venue, 10)  # a later delta starts over
    assert resync.status("BTCUSDT") == "synced"
    delta = venue.step()
    stop_at = delta.u
    resync(delta)  # on_delta forgets the stream, then raises: no resync for a forgotten stream
    assert app.of(CallbackFailed) == [CallbackFailed("BTCUSDT", "on_delta", "RuntimeError: unsubscribed")]
    assert resync.status("BTCUSDT") is None
    assert resync.tasks == 0
    await resync.aclose()


async def test_a_hole_in_the_buffer_needs_a_newer_snapshot() -> None:
    """A delta lost while the snapshot is fetched: the snapshot cannot bridge to what follows."""
    venue, app = Venue(), App()
    rest = Rest(venue, script=[Step(latency=1.05)])
    resync = depth_resync(app, rest)
    t0 = now()
    deltas = await feed(resync, venue, 40, skip=(5,))

    assert rest.times() == [t0, pytest.approx(t0 + 1.05 + 1.0)]
    [synced] = app.of(Synced)
    assert synced.attempts == 2
    assert synced.snapshot_seq >= deltas[6].u
    assert app.of(GapDetected) == []  # the stream was not synced yet: nothing had been applied
    assert app.snapshots("BTCUSDT") == 1
    assert resync.stats.stale_snapshots == 1
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_first_last_raising_reaches_the_caller_and_buffers_nothing() -> None:
    venue, app = Venue(), App()

    def first_last(d: Depth) -> tuple[int, int]:
        if d.u < d.U:
            raise ValueError(f"bad range {d.U}..{d.u}")
        return d.U, d.u

    bad = Depth("BTCUSDT", 9, 1, (), ())
    resync = depth_resync(app, Rest(venue), first_last=first_last)
    resync(venue.step())
    with pytest.raises(ValueError, match="bad range"):
        resync(bad)  # while syncing
    await feed(resync, venue, 10)
    with pytest.raises(ValueError, match="bad range"):
        resync(bad)  # while synced
    await feed(resync, venue, 10)
    assert [type(o) for o in app.outcomes] == [Synced]
    assert app.of(Synced)[0].attempts == 1
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_a_raising_on_delta_breaks_only_its_own_stream(caplog: pytest.LogCaptureFixture) -> None:
    btc, eth = Venue(), Venue("ETHUSDT", seed=8)
    app = App()
    rest = Rest(btc, eth)
    resync = depth_resync(app, rest)

    async def both() -> None:
        for i in range(50):
            resync(btc.step())
            delta = eth.step()
            if i == 20:  # the application fails halfway through this delta of ETH
                app.fail_on.add(("ETHUSDT", delta.u))
            resync(delta)
            await asyncio.sleep(EVERY)

    await both()

    assert app.of(CallbackFailed) == [CallbackFailed("ETHUSDT", "on_delta", "RuntimeError: boom")]
    assert resync.stats.callback_errors == 1
    assert len(app.of(Synced, "ETHUSDT")) == 2  # a fresh snapshot repaired the half-applied book
    assert [type(o) for o in app.outcomes if o.stream == "BTCUSDT"] == [Synced]
    assert len(rest.times("BTCUSDT")) == 1
    assert_in_sync(app, resync, btc, eth)
    assert any("on_delta raised" in r.getMessage() and r.exc_info for r in caplog.records)
    await resync.aclose()


async def test_a_raising_on_snapshot_is_a_failed_attempt() -> None:
    venue, app = Venue(), App()
    calls = 0

    def on_snapshot(stream: str, snap: Snap) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad snapshot")
        app.on_snapshot(stream, snap)

    rest = Rest(venue)
    resync = depth_resync(app, rest, on_snapshot=on_snapshot)
    await feed(resync, venue, 30)
    assert app.of(CallbackFailed) == [CallbackFailed("BTCUSDT", "on_snapshot", "ValueError: bad snapshot")]
    assert [o.attempts for o in app.of(Synced)] == [2]
    assert_in_sync(app, resync, venue)
    await resync.aclose()


async def test_a_raising_on_outcome_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    venue, app = Venue(), App()

    def on_outcome(outcome: ResyncOutcome) -> None:
        raise RuntimeError("observer bug")

    resync = depth_resync(app, Rest(venue), on_outcome=on_outcome)
    await feed(resync, venue, 10)
    assert resync.stats.outcome_errors == 1
    assert any("on_outcome raised" in r.getMessage() for r in caplog.records)
    assert_in_sync(app, resync, venue)
    await resync.aclose()


# -- as a client handler -------------------------------------------------------------------------------


class DepthUpdate(Message):
    e: Literal["depthUpdate"]
    s: str
    U: int
    u: int
    b: list[tuple[int, int]]
    a: list[tuple[int, int]]


async def test_registered_with_the_router_it_runs_as_a_sync_handler() -> None:
    """What ``client.on(DepthUpdate, resync)`` does: the router calls it inline, frame by frame."""
    venue = Venue()
    books: dict[str, tuple[Levels, Levels]] = {}

    def on_snapshot(symbol: str, snap: Snap) -> None:
        books[symbol] = (dict(snap.bids), dict(snap.asks))

    def on_delta(symbol: str, update: DepthUpdate) -> None:
        apply(books[symbol][0], update.b)
        apply(books[symbol][1], update.a)

    resync: Resync[DepthUpdate, Snap, str] = Resync(
        stream=lambda d: d.s,
        snapshot=Rest(venue),
        snapshot_seq=lambda s: s.lastUpdateId,
        first_last=lambda d: (d.U, d.u),
        on_snapshot=on_snapshot,
        on_delta=on_delta,
    )
    router = Router(discriminator="e")
    router.register(DepthUpdate, resync)
    for _ in range(20):
        d = venue.step()
        frame = json.dumps({"e": "depthUpdate", "s": d.s, "U": d.U, "u": d.u, "b": d.b, "a": d.a})
        assert router.dispatch(frame) is None  # handled inline: nothing to await
        await asyncio.sleep(EVERY)
    assert router.stats.handled == 20
    assert router.stats.handler_errors == 0
    assert books["BTCUSDT"] == venue.book
    await resync.aclose()


# -- construction --------------------------------------------------------------------------------------


def test_bad_options_fail_at_construction() -> None:
    app = App()
    rest = Rest(Venue())

    async def async_on_delta(stream: str, delta: Depth) -> None:
        pass

    with pytest.raises(TypeError, match="on_delta must be a plain"):
        depth_resync(app, rest, on_delta=async_on_delta)
    for options, message in [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_buffer": 0}, "max_buffer"),
        ({"snapshot_timeout": 0}, "snapshot_timeout"),
        ({"max_stale_run": 0}, "max_stale_run"),
        ({"backoff": Reconnect(max_attempts=3)}, "pass max_attempts="),
    ]:
        with pytest.raises(ValueError, match=message):
            depth_resync(app, rest, **options)
