"""Pool: many streams over several connections against a venue that enforces its limits.

The venue (:class:`~wsclient.testing.VenueServer`) closes a connection that carries too many streams
or sends too many messages, answers 429 to too many connects and cuts connections at their maximum
age, and counts every violation; it sends the same trade ids on every connection subscribed to a
stream. Limits are scaled down (100 streams per connection, 5 messages per second, 10 connects per
2 s, a 3 s maximum age) so that every shard rotates several times within a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import pytest

from wsclient import (
    Client,
    ClientConfig,
    GapDetected,
    Heartbeat,
    Message,
    Reconnect,
    Resync,
    SequenceGap,
    Synced,
    VenueLimits,
)
from wsclient.config import ConfigError
from wsclient.pool import Pool, StreamStale
from wsclient.testing import VenueRules, VenueServer


class Trade(Message):
    e: Literal["trade"]
    s: str
    t: int
    p: str
    q: str


RULES = VenueRules(
    streams_per_connection=100,
    messages_per_second=5,
    count_control_frames=True,
    connects_per_window=10,
    connect_window=2.0,
    max_connection_age=3.0,
    age_cut="abort",
)
LIMITS = VenueLimits(
    streams_per_connection=100,
    subscribe_batch=50,
    messages_per_second=5,
    count_control_frames=True,
    heartbeat_reserve=1,
    connects_per_window=10,
    connect_window=2.0,
    max_connection_age=3.0,
    age_jitter=0.2,
    rotation_overlap=0.8,
)


def binance_like() -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    ids = itertools.count(1)
    return (
        lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)},
        lambda streams: {"method": "UNSUBSCRIBE", "params": list(streams), "id": next(ids)},
    )


class Recorder:
    """What the handlers saw, per stream, and the gaps."""

    def __init__(self, pool: Pool) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.gaps: list[SequenceGap] = []
        self.events: list[Any] = []
        pool.on(Trade, lambda m: self.seen[m.s].append(m.t))
        pool.on_gap(self.gaps.append)
        pool.on_event(self.events.append)
        pool.on_unknown(lambda frame: None)  # the venue's acks

    def count(self, streams: list[str]) -> int:
        return min(len(self.seen[s]) for s in streams)

    def broken(self) -> dict[str, str]:
        """Streams whose ids are not exactly first..last, once each, in order."""
        bad = {}
        for stream, ids in self.seen.items():
            if ids != list(range(ids[0], ids[0] + len(ids))):
                bad[stream] = f"{len(ids)} ids, {len(ids) - len(set(ids))} copies, last {ids[-5:]}"
        return bad


STEP = 0.01


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls what the handlers recorded; bounded by the timeout
            await asyncio.sleep(STEP)


def make_pool(venue: VenueServer, **kwargs: Any) -> Pool:
    subscribe, unsubscribe = binance_like()
    return Pool(
        venue.url,
        subscribe=subscribe,
        unsubscribe=unsubscribe,
        config=ClientConfig(
            discriminator="e",
            heartbeat=Heartbeat(interval=1.5, timeout=1.0),
            reconnect=Reconnect(initial_delay=0.1, max_delay=0.5),
        ),
        limits=kwargs.pop("limits", LIMITS),
        dedup_key=lambda m: (m.s, m.t),
        **kwargs,
    )


async def test_300_streams_through_rotations_of_every_shard_exactly_once_within_the_limits() -> None:
    streams = [f"s{i:03d}@trade" for i in range(300)]
    # 4 trades a second per stream (1,200 in all): enough for every overlap to show copies, and little
    # enough that a loaded machine keeps up, so a rotation ends within its 0.8 s bound.
    async with VenueServer(RULES, rate=4) as venue:
        pool = make_pool(venue)
        rec = Recorder(pool)
        pool.add_streams(streams)
        assert [info.streams for info in pool.shards] == [100, 100, 100]
        async with pool:
            await pool.wait_open(10)
            await until(lambda: all(info.rotations >= 2 for info in pool.shards), timeout=20)
            mark = rec.count(streams)
            await until(lambda: rec.count(streams) >= mark + 3)
            stats = pool.stats
    assert venue.total_violations == 0, venue.violations
    assert venue.age_cuts == 0, "every connection was replaced before the venue cut it"
    assert not rec.broken(), list(rec.broken().items())[:3]
    assert rec.gaps == []
    assert stats.rotations >= 6 and stats.connects == 3 + stats.rotations
    assert stats.duplicates_dropped > 0, "the overlaps were real"
    assert stats.streams == 300 and len(stats.shards) == 3


async def test_a_restarted_venue_gets_every_stream_back_within_its_limits_and_the_gaps_reported() -> None:
    streams = [f"r{i:03d}@trade" for i in range(250)]
    rules = VenueRules(
        streams_per_connection=100, messages_per_second=5, connects_per_window=2, connect_window=1.0
    )
    limits = VenueLimits(
        streams_per_connection=100,
        subscribe_batch=10,  # 10 subscribe messages per shard: 5 per second at most
        messages_per_second=5,
        connects_per_window=2,
        connect_window=1.0,
    )
    # 5 trades a second per stream: the 0.5 s outage loses two or three of each, and a loaded machine
    # still keeps up with the 1,250 a second of the whole feed.
    async with VenueServer(rules, rate=5) as venue:
        pool = make_pool(venue, limits=limits)
        rec = Recorder(pool)
        pool.add_streams(streams)
        async with pool:
            await until(lambda: len(rec.seen) == 250 and rec.count(streams) >= 2)
            await venue.restart(down_for=0.5)
            # Trades above what the venue had sent when it listened again can only come through the
            # new connections (a count of trades would also be met by frames queued before the cut).
            sent = {s: venue.sent(s) for s in streams}
            await until(lambda: all(rec.seen[s][-1] > sent[s] for s in streams), timeout=30)
            stats = pool.stats
    assert venue.total_violations == 0, venue.violations  # connects, messages, streams
    assert not any(len(ids) != len(set(ids)) for ids in rec.seen.values()), "no copies"
    across = {g.stream for g in rec.gaps if g.across_reconnect and g.kind == "gap"}
    assert across == set(streams), f"{len(across)} of 250 streams reported their gap"
    assert stats.budget_waits > 0, "the resubscription was paced"
    assert stats.connect_waits > 0, "the reconnects waited for the connect quota"


async def test_streams_added_and_removed_at_run_time_are_repacked_make_before_break() -> None:
    limits = VenueLimits(streams_per_connection=10, subscribe_batch=5, messages_per_second=20)
    rules = VenueRules(streams_per_connection=10, messages_per_second=20)
    async with VenueServer(rules, rate=50) as venue:
        pool = make_pool(venue, limits=limits)
        rec = Recorder(pool)
        first = [f"a{i:02d}@trade" for i in range(12)]
        pool.add_streams(first)
        async with pool:
            await until(lambda: rec.count(first) >= 5)
            more = [f"b{i:02d}@trade" for i in range(13)]
            pool.add_streams(more)
            assert [info.streams for info in pool.shards] == [10, 10, 5]
            everything = first + more
            await until(lambda: rec.count(everything) >= 5)
            # 12 go: 13 left fit in two connections, the emptiest shard's streams move.
            gone = first[:8] + more[:4]
            pool.remove_streams(gone)
            kept = [s for s in everything if s not in gone]
            await until(lambda: len(pool.shards) == 2 and len(venue.connections) == 2, timeout=10)
            mark = {s: len(rec.seen[s]) for s in kept}
            await until(lambda: all(len(rec.seen[s]) >= mark[s] + 10 for s in kept))
            assert sorted(pool.streams) == sorted(kept)
            subscribed = sorted(s for info in venue.connections.values() for s in info.streams)
            stats = pool.stats
    assert subscribed == sorted(kept), "the venue carries exactly the pool's streams, once each"
    assert venue.total_violations == 0, venue.violations
    assert not {s: v for s, v in rec.broken().items() if s in kept}, rec.broken()
    assert rec.gaps == [] and stats.moves > 0


async def test_a_stream_the_venue_silently_drops_is_resubscribed_then_its_connection_replaced() -> None:
    streams = [f"q{i}@trade" for i in range(6)]
    async with VenueServer(VenueRules(), rate=100) as venue:
        pool = make_pool(venue, limits=VenueLimits(), stale_after=0.3)
        rec = Recorder(pool)
        pool.add_streams(streams)
        async with pool:
            await until(lambda: rec.count(streams) >= 5)
            (cid,) = venue.connections
            venue.mute("q3@trade", connection=cid)  # the venue forgets one subscription, silently
            others = {s: len(rec.seen[s]) for s in streams if s != "q3@trade"}
            await until(
                lambda: any(isinstance(e, StreamStale) and e.action == "replaced" for e in rec.events)
            )
            silent = len(rec.seen["q3@trade"])
            await until(lambda: len(rec.seen["q3@trade"]) >= silent + 20)
            stats = pool.stats
    stale = [e for e in rec.events if isinstance(e, StreamStale)]
    assert [(e.stream, e.action) for e in stale] == [("q3@trade", "resubscribed"), ("q3@trade", "replaced")]
    assert all(0.3 <= e.silent_for < 1.5 for e in stale), stale
    assert stats.stale_resubscribes == 1 and stats.stale_replacements == 1
    assert all(len(rec.seen[s]) > others[s] + 50 for s in others), "the others kept flowing"
    # What the venue never sent is a gap, reported, not hidden; the other streams are whole.
    assert [g.stream for g in rec.gaps] == ["q3@trade"], rec.gaps
    assert list(rec.broken()) == ["q3@trade"], rec.broken()


async def test_silence_while_a_connection_is_down_is_not_staleness() -> None:
    # A restart longer than the limit: the reconnect replays every subscription, so no stream may be
    # resubscribed for the outage (a burst of them would hold up the shard's message budget).
    streams = [f"d{i}@trade" for i in range(6)]
    async with VenueServer(VenueRules(), rate=100) as venue:
        pool = make_pool(venue, limits=VenueLimits(), stale_after=0.3)
        rec = Recorder(pool)
        pool.add_streams(streams)
        async with pool:
            await until(lambda: rec.count(streams) >= 5)
            before = {s: len(rec.seen[s]) for s in streams}
            venue.rate = 0  # silent from the restart until shortly after the reconnect: below the limit
            # Caught up first: trades still in flight when the venue goes down are a real gap.
            await until(lambda: all(rec.seen[s][-1] == venue.sent(s) for s in streams))
            await venue.restart(down_for=1.0)
            await pool.wait_open(10)
            await asyncio.sleep(0.15)
            venue.rate = 100
            await until(lambda: all(len(rec.seen[s]) >= before[s] + 30 for s in streams))
            stats = pool.stats
    assert [e for e in rec.events if isinstance(e, StreamStale)] == []
    assert stats.stale_resubscribes == 0 and stats.stale_replacements == 0
    assert not rec.broken(), rec.broken()


def test_pool_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="subscribe must be a function"):
        Pool("ws://127.0.0.1:1/ws", subscribe="SUBSCRIBE")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stale_after needs dedup_key"):
        Pool("ws://127.0.0.1:1/ws", subscribe=list, stale_after=5.0)
    with pytest.raises(ConfigError, match="stale_after must be"):
        Pool("ws://127.0.0.1:1/ws", subscribe=list, stale_after="soon", dedup_key=lambda m: None)  # type: ignore[arg-type]


# -- an order book kept whole across a forced gap ---------------------------------------------------------


class DepthUpdate(Message):
    e: Literal["depthUpdate"]
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]


async def test_an_order_book_is_rebuilt_after_a_forced_gap_and_matches_the_venue() -> None:
    stream = "btc@depth"
    book: dict[str, dict[str, str]] = {"bids": {}, "asks": {}}

    def apply(side: str, changes: list[tuple[str, str]] | list[list[str]]) -> None:
        for price, qty in changes:
            if qty == "0" or Decimal(qty) == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = qty

    def on_snapshot(_stream: str, snap: dict[str, Any]) -> None:
        book["bids"], book["asks"] = {}, {}
        apply("bids", snap["bids"])
        apply("asks", snap["asks"])

    def on_delta(_stream: str, delta: DepthUpdate) -> None:
        apply("bids", delta.b)
        apply("asks", delta.a)

    async with VenueServer(VenueRules(), rate=0) as venue:
        venue.emit(stream, 5)  # the book has a history before anyone subscribes

        async def snapshot(name: str) -> dict[str, Any]:
            def get() -> dict[str, Any]:
                with urllib.request.urlopen(venue.depth_url(name), timeout=5) as answer:
                    return json.loads(answer.read())  # type: ignore[no-any-return]

            return await asyncio.to_thread(get)

        outcomes: list[Any] = []
        resync: Resync[DepthUpdate, dict[str, Any], str] = Resync(
            stream=lambda d: d.s,
            snapshot=snapshot,
            snapshot_seq=lambda snap: int(snap["lastUpdateId"]),
            first_last=lambda d: (d.U, d.u),
            on_snapshot=on_snapshot,
            on_delta=on_delta,
            on_outcome=outcomes.append,
            backoff=Reconnect(initial_delay=0.05, max_delay=0.2),
        )
        client = Client(venue.url, config=ClientConfig(discriminator="e"))
        client.on(DepthUpdate, resync)
        client.on_unknown(lambda frame: None)
        client.subscribe({"method": "SUBSCRIBE", "params": [stream], "id": 1})
        async with client, resync:
            await until(lambda: bool(venue.subscribers(stream)))
            venue.emit(stream, 20)
            await until(lambda: any(isinstance(o, Synced) for o in outcomes))
            venue.emit(stream, 10)
            venue.skip(stream, 3)  # lost on the way: the book is broken from here
            venue.emit(stream, 10)
            await until(lambda: sum(isinstance(o, Synced) for o in outcomes) == 2)
            venue.emit(stream, 15)
            await until(lambda: resync.last_applied(stream) == venue.sent(stream))
            last, bids, asks = venue.book(stream)
            status = resync.status(stream)
    gaps = [o for o in outcomes if isinstance(o, GapDetected)]
    assert len(gaps) == 1 and gaps[0].received > gaps[0].expected
    assert book == {"bids": bids, "asks": asks}, "the local book is the venue's"
    assert resync.stats.gaps == 1 and status == "synced" and last == venue.sent(stream)
