"""Exactly once, in order, through overlapping connections: the de-duplicator alone, then a client
rotating its connection against a venue that sends the same trade ids on every connection."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from typing import Any, Literal

import pytest

from wsclient import Client, ClientConfig, Heartbeat, Message, SequenceGap, VenueLimits
from wsclient.dedup import Dedup, Judgement
from wsclient.routing import Router, SequenceTracker
from wsclient.testing import VenueRules, VenueServer
from wsclient.transport.memory import MemoryServer

D, X, H = Judgement.DELIVER, Judgement.DROP, Judgement.HOLD


# -- the de-duplicator alone -----------------------------------------------------------------------------


def feed(dedup: Dedup, events: list[tuple[str, int, bool]]) -> list[tuple[str, int]]:
    """Run ``(stream, seq, merging)`` through ``dedup`` as the router does; what is delivered."""
    out: list[tuple[str, int]] = []
    for stream, seq, merging in events:
        verdict = dedup.judge(stream, seq, merging=merging)
        if verdict is H:
            dedup.hold(stream, seq, seq)
            continue
        if verdict is X:
            continue
        dedup.sequences.observe(stream, seq)
        out.append((stream, seq))
        for item in dedup.release(stream):
            dedup.sequences.observe(stream, item)
            out.append((stream, item))
    return out


def test_copies_are_dropped_and_the_state_is_one_mark_per_stream() -> None:
    dedup = Dedup()
    events = [("a", n, False) for n in range(1, 101)] + [("a", n, False) for n in range(50, 101)]
    assert feed(dedup, events) == [("a", n) for n in range(1, 101)]
    assert dedup.dropped == 51 and dedup.held_now == 0
    assert dedup.sequences.last("a") == 100


def test_a_link_running_ahead_is_held_until_the_other_catches_up() -> None:
    dedup = Dedup()
    old = [("s", n, True) for n in range(1, 11)]
    new = [("s", n, True) for n in range(6, 16)]
    # The new link is ahead: 6..15 arrive while the old one is at 3.
    events = old[:3] + new + old[3:]
    delivered = feed(dedup, events)
    assert delivered == [("s", n) for n in range(1, 16)], delivered
    # 6..15 waited for 4 and 5, then followed them; the old link's 6..10 were copies by then.
    assert dedup.held == 10 and dedup.dropped == 5 and dedup.held_now == 0


def test_the_end_of_an_overlap_delivers_what_is_held_with_its_gap() -> None:
    dedup = Dedup()
    assert feed(dedup, [("s", 1, True), ("s", 2, True), ("s", 5, True), ("s", 6, True)]) == [
        ("s", 1),
        ("s", 2),
    ]
    released = dedup.release_all()
    assert [item for _, item in released] == [5, 6]
    for _, item in released:
        dedup.sequences.observe("s", item)
    assert dedup.sequences.gaps == 1 and dedup.sequences.missing == 2


def test_outside_an_overlap_a_gap_is_delivered_at_once() -> None:
    dedup = Dedup()
    assert feed(dedup, [("s", 1, False), ("s", 5, False)]) == [("s", 1), ("s", 5)]
    assert dedup.held_now == 0


def test_a_reset_is_delivered_not_taken_for_a_copy() -> None:
    dedup = Dedup(SequenceTracker(start=1, max_replay=100))
    assert feed(dedup, [("s", n, False) for n in range(500, 503)] + [("s", 1, False), ("s", 2, False)]) == [
        ("s", 500),
        ("s", 501),
        ("s", 502),
        ("s", 1),
        ("s", 2),
    ]


def test_moves_merge_one_stream_and_the_hold_is_bounded() -> None:
    dedup = Dedup(max_held=3)
    feed(dedup, [("m", 1, False), ("other", 1, False)])
    dedup.begin_move("m")
    assert dedup.merging("m") and not dedup.merging("other")
    assert feed(dedup, [("m", n, False) for n in (4, 5, 6, 7)]) == [("m", 7)]  # 3 held, then full
    assert dedup.overflowed == 1
    assert feed(dedup, [("other", 9, False)]) == [("other", 9)], "not moving: a plain gap"
    assert [item for _, item in dedup.end_move("m")] == [], "4..6 are below 7 now: copies"
    assert dedup.held_now == 0


def test_a_reconnect_marks_only_the_streams_of_the_router_that_reconnected() -> None:
    # Two shards of a pool share one de-duplicator; only the one that reconnected straddles it.
    shared = Dedup()
    gaps: list[SequenceGap] = []
    routers = [
        Router(discriminator="e", dedup=shared, default_seq_key=lambda m: (m.s, m.t), on_gap=gaps.append)
        for _ in range(2)
    ]
    for router, name in zip(routers, "ab", strict=True):
        router.register(Trade, lambda m: None)
        router.dispatch(trade(f"{name}@trade", 1))
    routers[0].mark_reconnect()
    routers[0].dispatch(trade("a@trade", 5))
    routers[1].dispatch(trade("b@trade", 5))
    assert [(g.stream, g.across_reconnect) for g in gaps] == [("a@trade", True), ("b@trade", False)]


def test_the_state_after_an_overlap_is_one_mark_per_stream_again() -> None:
    dedup = Dedup()
    for n in range(2000):
        feed(dedup, [(f"s{n}", 1, False)])
    dedup.sequences.mark_reconnect()
    for n in range(2000):
        feed(dedup, [(f"s{n}", 3, True), (f"s{n}", 2, True)])  # held, then released
    assert dedup.held == 2000 and dedup.holding == 0 and dedup.calm
    assert sys.getsizeof(dedup.sequences._after_reconnect) < 1000, "the emptied set was made anew"


# -- a client rotating its connection (real sockets) ------------------------------------------------------


class Trade(Message):
    e: Literal["trade"]
    s: str
    t: int
    p: str
    q: str


def trade(stream: str, t: int) -> str:
    return json.dumps({"e": "trade", "s": stream, "t": t, "p": "1.0", "q": "2"})


def contiguous(seen: dict[str, list[int]]) -> dict[str, str]:
    """Streams whose delivered ids are not exactly first..last once each, with what is wrong."""
    bad = {}
    for stream, ids in seen.items():
        if ids != list(range(ids[0], ids[0] + len(ids))):
            dups = len(ids) - len(set(ids))
            bad[stream] = f"{len(ids)} ids, {dups} duplicates, first {ids[:5]}, last {ids[-5:]}"
    return bad


STEP = 0.005


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls what the handlers recorded; bounded by the timeout
            await asyncio.sleep(STEP)


@pytest.mark.parametrize("backend", ["websockets", "picows"])
async def test_rotations_deliver_every_trade_exactly_once_in_order(backend: str) -> None:
    streams = [f"s{i:02d}@trade" for i in range(8)]
    async with VenueServer(VenueRules(), rate=400) as venue:
        client = Client(
            venue.url,
            config=ClientConfig(
                discriminator="e", heartbeat=Heartbeat(interval=5, timeout=4), transport=backend
            ),
            dedup_key=lambda m: (m.s, m.t),
        )
        seen: dict[str, list[int]] = defaultdict(list)
        client.on(Trade, lambda m: seen[m.s].append(m.t))
        gaps: list[SequenceGap] = []
        client.on_gap(gaps.append)
        client.subscribe({"method": "SUBSCRIBE", "params": streams, "id": 1})
        async with client:
            await until(lambda: len(seen) == len(streams) and min(len(v) for v in seen.values()) >= 20)
            for round_ in range(1, 4):
                assert client.rotate(overlap=3.0)
                await until(lambda r=round_: client.stats.rotations == r and len(venue.connections) == 1)
                mark = {s: len(v) for s, v in seen.items()}
                await until(lambda m=mark: all(len(seen[s]) >= m[s] + 20 for s in streams))
            stats = client.stats
    assert not contiguous(seen), contiguous(seen)
    assert gaps == [], gaps
    assert stats.duplicates_dropped > 0, "the overlaps were real: copies arrived and were dropped"
    assert venue.total_violations == 0


@pytest.mark.parametrize("backend", ["websockets", "picows"])
async def test_age_rotations_keep_the_feed_whole_under_a_venue_that_cuts(backend: str) -> None:
    streams = [f"a{i}@trade" for i in range(4)]
    rules = VenueRules(max_connection_age=1.2, age_cut="abort")
    limits = VenueLimits(max_connection_age=1.2, age_jitter=0.2, rotation_overlap=0.4, margin=0.0)
    async with VenueServer(rules, rate=300) as venue:
        client = Client(
            venue.url,
            config=ClientConfig(
                discriminator="e",
                heartbeat=Heartbeat(interval=5, timeout=4),
                limits=limits,
                transport=backend,
            ),
            dedup_key=lambda m: (m.s, m.t),
        )
        seen: dict[str, list[int]] = defaultdict(list)
        client.on(Trade, lambda m: seen[m.s].append(m.t))
        gaps: list[SequenceGap] = []
        client.on_gap(gaps.append)
        client.subscribe({"method": "SUBSCRIBE", "params": streams, "id": 1})
        async with client:
            await until(lambda: client.stats.rotations >= 3, timeout=15)
            stats = client.stats
    assert venue.age_cuts == 0, "every connection was replaced before the venue cut it"
    assert stats.connects == stats.rotations + 1, "no reconnect: only rotations"
    assert stats.reconnects == 0, "a rotation is not a reconnect"
    assert not contiguous(seen), contiguous(seen)
    assert gaps == []


def memory_client(server: MemoryServer, **kwargs: Any) -> Client:
    """A client of the in-memory venue, without heartbeat (virtual time decides everything)."""
    config = ClientConfig(discriminator="e", heartbeat=Heartbeat(mode="off"))
    return Client("ws://venue.test/ws", config=config, connector=server.connect, **kwargs)


@pytest.mark.looptime
async def test_a_subscription_added_during_a_rotation_reaches_the_new_connection() -> None:
    server = MemoryServer()
    client = memory_client(server, dedup_key=lambda m: (m.s, m.t))
    seen: list[int] = []
    client.on(Trade, lambda m: seen.append(m.t))
    client.subscribe("first")
    async with client:
        await client.wait_open(5)
        old = server.connections[0]
        old.send(trade("x@trade", 1))  # the old link carries x: the switch waits for the new one to
        await until(lambda: seen == [1])
        assert client.rotate(overlap=10.0)
        new = await server.wait_connections(2)
        await new.wait_received(1)  # its replay
        await asyncio.sleep(0.5)  # virtual time: the rotation waits for x on the new link
        assert client.stats.rotations == 0
        client.subscribe("second")
        new.send(trade("x@trade", 1), trade("x@trade", 2))  # caught up: the switch follows
        await until(lambda: client.stats.rotations == 1 and seen == [1, 2])
        await new.wait_received(2)
    assert new.received == ["first", "second"], "the new connection got the late subscription"
    assert old.received == ["first", "second"]


@pytest.mark.looptime
async def test_a_rotation_is_not_counted_as_a_reconnect_but_a_lost_link_is() -> None:
    server = MemoryServer()
    client = memory_client(server)
    client.subscribe("first")
    async with client:
        await client.wait_open(5)
        assert client.rotate(overlap=1.0)
        new = await server.wait_connections(2)
        await until(lambda: client.stats.rotations == 1)
        assert (client.stats.connects, client.stats.reconnects) == (2, 0)
        new.drop()  # a lost link: the client reconnects
        await server.wait_connections(3)
        await until(lambda: client.stats.connects == 3)
        stats = client.stats
    assert (stats.connects, stats.rotations, stats.reconnects) == (3, 1, 1)
