"""NatsJetStreamSink and Fleet against a real nats-server with JetStream and the fake venue.

Every check reads the JetStream stream back: per subject, the trade ids must be exactly the
contiguous run the venue produced, once each, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from wsclient import Client, ClientConfig, Heartbeat, Pool, Reconnect, VenueLimits
from wsclient.fleet import Fleet, owners, share
from wsclient.sinks import JetStreamSpec, NatsJetStreamSink, SinkClosedError
from wsclient.testing import VenueServer
from wsclient.testing.nats import NatsServer
from wsclient.testing.venue import VenueTrade

FEEDER = Path(__file__).resolve().parent / "bus_feeder.py"
STREAM = JetStreamSpec(name="MD", subjects=("md.>",), duplicate_window=60.0)
CONFIG = ClientConfig(
    discriminator="e",
    heartbeat=Heartbeat(interval=1.0, timeout=1.0),
    reconnect=Reconnect(initial_delay=0.05, max_delay=0.5),
)


def subject(m: VenueTrade) -> str:
    return f"md.trades.{m.s.split('@')[0]}"


def msg_id(m: VenueTrade) -> str:
    return f"{m.s}:{m.t}"


def make_sink(url: str, **kwargs: Any) -> NatsJetStreamSink:
    return NatsJetStreamSink(url, subject=subject, msg_id=msg_id, stream=STREAM, **kwargs)


def subscribe_message() -> Callable[[Any], dict[str, Any]]:
    ids = itertools.count(1)
    return lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)}


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls counters of other parts; bounded by the timeout
            await asyncio.sleep(0.01)


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    async with NatsServer() as server:
        yield server


class Stored:
    """What the JetStream stream holds, read back in stream order."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = defaultdict(list)  # subject -> trade ids in stream order
        self.payloads: list[bytes] = []
        self.total = 0

    def broken(self) -> dict[str, str]:
        """Subjects whose ids are not one contiguous run, once each, in order."""
        bad = {}
        for subj, ids in self.ids.items():
            if ids != list(range(ids[0], ids[0] + len(ids))):
                copies = len(ids) - len(set(ids))
                holes = ids[-1] - ids[0] + 1 - len(set(ids))
                bad[subj] = f"{len(ids)} ids, {copies} copies, {holes} missing"
        return bad


async def read_back(url: str, stream: str = "MD") -> Stored:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        count = info.state.messages
        sub = await js.pull_subscribe(
            "md.>", stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy="none")
        )
        out = Stored()
        while out.total < count:
            for msg in await sub.fetch(min(2000, count - out.total), timeout=5):
                out.total += 1
                headers = msg.headers or {}
                stream_name, _, trade_id = headers["Nats-Msg-Id"].rpartition(":")
                assert msg.subject == f"md.trades.{stream_name.split('@')[0]}"
                out.ids[msg.subject].append(int(trade_id))
                out.payloads.append(msg.data)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def test_rendezvous_moves_only_the_streams_of_the_member_that_left() -> None:
    streams = [f"s{i}" for i in range(300)]
    three = ["a", "b", "c"]
    before = {m: share(streams, three, m) for m in three}
    assert sum(len(s) for s in before.values()) == 300
    assert all(70 <= len(s) <= 130 for s in before.values()), {m: len(s) for m, s in before.items()}
    after = {m: share(streams, ["a", "b"], m) for m in ("a", "b")}
    for m in ("a", "b"):
        assert before[m] <= after[m]  # nobody loses a stream it had
    assert after["a"] | after["b"] == set(streams)
    assert (after["a"] - before["a"]) | (after["b"] - before["b"]) == before["c"]
    # Redundancy: two distinct owners each; a member's death leaves the other owner in place.
    for s in streams:
        two = owners(s, three, 2)
        assert len(set(two)) == 2
        survivors = [m for m in two if m != "c"]
        assert set(survivors) <= set(owners(s, ["a", "b"], 2))
    assert share(streams, three, "z") == set()


@pytest.mark.serial
async def test_100k_sequenced_trades_through_a_pool_into_jetstream_exactly_once_in_order(
    nats_server: NatsServer,
) -> None:
    streams = [f"s{i:02d}@trade" for i in range(40)]
    per_stream = 2_500
    async with VenueServer(rate=0, max_buffer=40_000) as venue:
        pool = Pool(
            venue.url,
            subscribe=subscribe_message(),
            config=CONFIG,
            limits=VenueLimits(streams_per_connection=10, subscribe_batch=10),
            dedup_key=lambda m: (m.s, m.t),
        )
        sink = make_sink(nats_server.url, max_pending=1024)
        pool.on(VenueTrade, sink)
        frames: list[str | bytes] = []
        pool.on_message(frames.append)
        pool.on_unknown(lambda frame: None)
        pool.add_streams(streams)
        async with sink, pool:
            await pool.wait_open(10)
            await until(lambda: all(venue.subscribers(s) for s in streams))
            for s in streams:
                venue.emit(s, per_stream)
            await until(lambda: sink.stats.received >= 100_000, timeout=60)
            assert await sink.flush(30)
    stats = sink.stats
    assert (stats.received, stats.stored, stats.duplicates, stats.pending) == (100_000, 100_000, 0, 0)
    assert stats.abandoned == stats.reordered == 0
    stored = await read_back(nats_server.url)
    assert stored.total == 100_000
    assert stored.broken() == {}
    assert {subj: (ids[0], len(ids)) for subj, ids in stored.ids.items()} == {
        f"md.trades.{s.split('@')[0]}": (1, per_stream) for s in streams
    }
    # payload="raw": the frames exactly as the venue sent them.
    trades = [f.encode() if isinstance(f, str) else f for f in frames if '"trade"' in str(f)]
    assert sorted(stored.payloads) == sorted(trades)


async def test_a_nats_crash_mid_feed_loses_nothing_keeps_order_and_bounds_memory(
    nats_server: NatsServer,
) -> None:
    streams = [f"c{i}@trade" for i in range(10)]
    async with VenueServer(rate=300, max_buffer=100_000) as venue:
        client = Client(venue.url, config=CONFIG)
        sink = make_sink(nats_server.url, max_pending=64, reconnect_max=0.2)
        client.on(VenueTrade, sink)
        client.on_unknown(lambda frame: None)
        client.subscribe(subscribe_message()(streams))
        peak = 0

        def watch(frame: object) -> None:
            nonlocal peak
            peak = max(peak, sink.stats.pending)

        client.on_message(watch)
        async with sink, client:
            await until(lambda: sink.stats.stored >= 2_000)
            await nats_server.restart(crash=True, down_for=0.5)
            await until(lambda: sink.stats.reconnects >= 1)
            mark = sink.stats.stored
            await until(lambda: sink.stats.stored >= mark + 2_000)
            venue.rate = 0
            await until(lambda: sink.stats.received == client.stats.messages_in - 1, timeout=20)
            assert await sink.flush(20)
        stats = sink.stats
    assert stats.waits > 0  # the handlers were held back while the server was down
    assert peak <= 64 + 1
    assert stats.abandoned == 0
    stored = await read_back(nats_server.url)
    assert stored.broken() == {}
    assert sum(len(v) for v in stored.ids.values()) == stats.received
    # An entry JetStream stored just before the crash, whose acknowledgement the crash lost, is
    # resent and acknowledged as a copy: one copy in the stream, counted in duplicates.
    assert stored.total == stats.stored + stats.duplicates == stats.received
    assert client.stats.reconnects == 0  # the venue link never noticed


async def test_close_flushes_everything_and_a_message_after_close_is_a_handler_error(
    nats_server: NatsServer,
) -> None:
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=CONFIG)
        sink = make_sink(nats_server.url, max_pending=16)
        client.on(VenueTrade, sink)
        client.on_unknown(lambda frame: None)
        errors: list[BaseException] = []
        client.on_error(lambda raw, exc: errors.append(exc))
        client.subscribe(subscribe_message()(["x@trade"]))
        async with client:
            await until(lambda: bool(venue.subscribers("x@trade")))
            venue.emit("x@trade", 500)
            await until(lambda: sink.stats.received == 500)
            await sink.close()
            assert sink.stats.stored == 500 and sink.stats.pending == 0
            venue.emit("x@trade", 1)
            await until(lambda: bool(errors))
            assert isinstance(errors[0], SinkClosedError)
            assert client.state.name == "OPEN"
    assert (await read_back(nats_server.url)).total == 500


async def test_close_with_the_server_gone_counts_what_it_abandons(nats_server: NatsServer) -> None:
    sink = make_sink(nats_server.url, max_pending=100, ack_timeout=0.2)
    await sink.start(timeout=5)
    await nats_server.kill()
    trade = VenueTrade(e="trade", s="y@trade", t=1, p=1, q=1, E=0)  # type: ignore[arg-type]
    for t in range(1, 11):
        assert sink(trade.model_copy(update={"t": t}), b"{}") is None
    await sink.close(timeout=0.3)
    assert sink.stats.abandoned == 10
    assert sink.stats.pending == 0


def test_bad_sink_config_fails_at_construction_naming_the_field() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        NatsJetStreamSink(subject=subject, msg_id=msg_id, max_pending=0)
    with pytest.raises(ValueError, match="ack_timeout"):
        NatsJetStreamSink(subject=subject, msg_id=msg_id, ack_timeout=-1)
    with pytest.raises(TypeError, match="msg_id"):
        NatsJetStreamSink(subject=subject, msg_id="s:t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="payload"):
        NatsJetStreamSink(subject=subject, msg_id=msg_id, payload="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subjects"):
        JetStreamSpec(name="MD", subjects=("md..x",))


# -- processes: redundant feeders and a fleet ---------------------------------------------------


class Feeder:
    """One ``tests/bus_feeder.py`` process."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(FEEDER),
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert b"ready" in line, line

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        assert self.proc.stderr is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        reading = asyncio.gather(self.proc.stdout.read(), self.proc.stderr.read())
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), 30)
        except TimeoutError:
            self.proc.send_signal(signal.SIGQUIT)  # every task's stack, then every thread's
            await asyncio.sleep(0.5)
            self.proc.send_signal(signal.SIGUSR2)
            await asyncio.sleep(0.5)
            self.proc.kill()
            await self.proc.wait()
            _, err = await reading
            pytest.fail(f"the feeder did not stop within 30 s of SIGTERM:\n{err.decode()[-6000:]}")
        out, err = await reading
        assert self.proc.returncode == 0, (out, err.decode()[-3000:])
        return json.loads(out.splitlines()[-1])["stats"]  # type: ignore[no-any-return]

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_two_redundant_feeders_one_killed_and_restarted_give_no_copy_and_no_gap(
    nats_server: NatsServer,
) -> None:
    streams = [f"r{i}@trade" for i in range(20)]
    async with VenueServer(rate=100, max_buffer=50_000) as venue:
        a = Feeder(venue.url, nats_server.url, *streams)
        b = Feeder(venue.url, nats_server.url, *streams)
        try:
            await asyncio.gather(a.start(), b.start())
            await until(lambda: all(len(venue.subscribers(s)) == 2 for s in streams))
            await asyncio.sleep(0.5)
            await a.kill()
            await asyncio.sleep(0.5)  # B alone
            a = Feeder(venue.url, nats_server.url, *streams)
            await a.start()
            await until(lambda: all(len(venue.subscribers(s)) == 2 for s in streams))
            await asyncio.sleep(0.5)
            venue.rate = 0
            stats_b = await b.stop()
            stats_a = await a.stop()
        finally:
            await a.cleanup()
            await b.cleanup()
    stored = await read_back(nats_server.url)
    assert set(holes(stored).values()) == {0}
    # Order is not asserted: A's first trades after its restart land ahead of those B had in flight
    # (see holes()); the number depends on how far B lags, which a loaded machine stretches.
    print(f"trades stored after a later one: {inversions(stored)}")
    # B ran throughout: everything it was given is in the stream, once.
    assert stats_b["abandoned"] == stats_a["abandoned"] == 0
    assert stats_a["duplicates"] + stats_b["duplicates"] > 0  # both really published the same ids
    for subj, ids in stored.ids.items():
        stream = subj.rsplit(".", 1)[1] + "@trade"
        # The last trade of each stream is stored (not necessarily last: see holes()).
        assert max(ids) == venue.sent(stream), (subj, max(ids), venue.sent(stream))


def fleet_args(member: str, lease: float, redundancy: int = 1) -> tuple[str, ...]:
    return ("--fleet", "fl", "--member", member, "--lease", str(lease), "--redundancy", str(redundancy))


def holes(stored: Stored) -> dict[str, int]:
    """Trades missing inside each subject's run; copies are asserted absent.

    Order is not asserted here: when a second feeder starts a stream (a takeover, a restart) its
    first trade can land just ahead of one the other feeder still had in flight. That is the
    stated limit of redundant feeders; :func:`inversions` counts it.
    """
    out = {}
    for subj, ids in stored.ids.items():
        assert len(ids) == len(set(ids)), subj
        out[subj] = max(ids) - min(ids) + 1 - len(ids)
    return out


def inversions(stored: Stored) -> int:
    """Trades stored after a later trade of their subject."""
    count = 0
    for ids in stored.ids.values():
        high = 0
        for t in ids:
            if t < high:
                count += 1
            high = max(high, t)
    return count


async def test_with_redundancy_two_a_killed_member_leaves_no_gap(nats_server: NatsServer) -> None:
    streams = [f"k{i:02d}@trade" for i in range(60)]
    async with VenueServer(rate=20, max_buffer=50_000) as venue:
        feeders = {m: Feeder(venue.url, nats_server.url, *streams, *fleet_args(m, 1.5, 2)) for m in "abc"}
        try:
            await asyncio.gather(*(f.start() for f in feeders.values()))
            await until(lambda: all(len(venue.subscribers(s)) == 2 for s in streams), timeout=30)
            await feeders["b"].kill()
            # The survivors restore two copies of every stream once the lease runs out.
            await until(lambda: all(len(venue.subscribers(s)) == 2 for s in streams), timeout=10)
            await asyncio.sleep(0.3)
            venue.rate = 0
            stats = [await feeders[m].stop() for m in "ac"]
        finally:
            for f in feeders.values():
                await f.cleanup()
    stored = await read_back(nats_server.url)
    assert set(holes(stored).values()) == {0}
    assert len(stored.ids) == 60
    assert sum(s["duplicates"] for s in stats) > 0
    print(f"trades stored after a later one: {inversions(stored)}")


async def test_a_member_joining_takes_its_share_make_before_break(nats_server: NatsServer) -> None:
    streams = [f"j{i:02d}@trade" for i in range(60)]
    async with VenueServer(rate=20, max_buffer=50_000) as venue:
        feeders = {m: Feeder(venue.url, nats_server.url, *streams, *fleet_args(m, 1.0)) for m in "ab"}
        try:
            await asyncio.gather(*(f.start() for f in feeders.values()))
            await until(lambda: all(len(venue.subscribers(s)) == 1 for s in streams), timeout=30)
            feeders["c"] = Feeder(venue.url, nats_server.url, *streams, *fleet_args("c", 1.0))
            await feeders["c"].start()
            moved = share(streams, ["a", "b", "c"], "c")
            assert moved
            # Overlap first (two subscribers), then the old owners let go.
            await until(lambda: all(len(venue.subscribers(s)) == 2 for s in moved), timeout=10)
            await until(lambda: all(len(venue.subscribers(s)) == 1 for s in streams), timeout=10)
            venue.rate = 0
            # (Stopped one after the other, the later ones take over the streams of those gone.)
            stats = {m: await feeders[m].stop() for m in "abc"}
        finally:
            for f in feeders.values():
                await f.cleanup()
    stored = await read_back(nats_server.url)
    assert set(holes(stored).values()) == {0}
    assert sum(s["duplicates"] for s in stats.values()) > 0  # the overlap's copies, dropped


async def test_a_fleet_of_three_over_300_streams_takes_over_a_killed_member(
    nats_server: NatsServer,
) -> None:
    streams = [f"f{i:03d}@trade" for i in range(300)]
    lease = 1.5
    async with VenueServer(rate=5, max_buffer=50_000) as venue:
        feeders = {
            m: Feeder(
                venue.url, nats_server.url, *streams, "--fleet", "fl", "--member", m, "--lease", str(lease)
            )
            for m in ("m1", "m2", "m3")
        }
        try:
            await asyncio.gather(*(f.start() for f in feeders.values()))
            mine = {m: share(streams, list(feeders), m) for m in feeders}
            await until(lambda: all(len(venue.subscribers(s)) == 1 for s in streams), timeout=30)
            await feeders["m2"].kill()
            killed_at = time.monotonic()
            orphans = mine["m2"]
            await until(lambda: all(len(venue.subscribers(s)) == 1 for s in orphans), timeout=lease * 4 + 5)
            took = time.monotonic() - killed_at
            await asyncio.sleep(0.5)
            venue.rate = 0
            stats = {m: await feeders[m].stop() for m in ("m1", "m3")}
        finally:
            for f in feeders.values():
                await f.cleanup()
    print(f"takeover of {len(orphans)} streams in {took:.2f} s (lease {lease} s)")
    assert took < lease + 1.0 + 2.0, took  # the lease, one renewal period, a subscribe (and slack)
    assert sum(s["taken"] for s in stats.values()) >= 300 - len(orphans) + len(orphans)
    stored = await read_back(nats_server.url)
    worst = 0
    # Streams of the survivors: whole. The killed member's: at most the takeover's gap, reported by
    # the sequence check (a hole), never a copy or a reorder.
    missing = holes(stored)
    for subj, ids in stored.ids.items():
        stream = subj.rsplit(".", 1)[1] + "@trade"
        if stream not in orphans:
            assert ids == list(range(ids[0], ids[0] + len(ids))), subj
        else:
            worst = max(worst, missing[subj])
    print(f"largest hole in a taken-over stream: {worst} trades at 5/s")


async def test_fleet_close_ends_a_renewal_that_swallows_its_cancellation(nats_server: NatsServer) -> None:
    """On Python 3.11 nats-py's ``wait_for`` swallows a cancellation that lands as its reply does,
    and the renewal loop went on: ``close()`` waited for it for ever (a feeder that never stopped)."""
    pool = Pool("ws://127.0.0.1:9/", subscribe=lambda streams: list(streams))
    fleet = Fleet(pool, nats_server.url, ["a@trade"], name="swallow", member="m", lease=0.6)
    await fleet.start()
    assert fleet._kv is not None
    put = fleet._kv.put
    renewing = asyncio.Event()
    swallowed = 0

    async def put_like_wait_for(key: str, value: bytes) -> int:
        nonlocal swallowed
        renewing.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            swallowed += 1  # as wait_for does when its future is done by then: the result, no error
        return await put(key, value)

    fleet._kv.put = put_like_wait_for  # type: ignore[method-assign]
    await asyncio.wait_for(renewing.wait(), 5)
    async with asyncio.timeout(10):
        await fleet.close()
    assert swallowed >= 1
    await pool.close()


async def test_a_bad_subject_or_id_is_that_messages_error_and_the_rest_flows(nats_server: NatsServer) -> None:
    sink = NatsJetStreamSink(
        nats_server.url,
        subject=lambda m: {2: "md.bad subject", 5: "md.\udc80"}.get(m.t, "md.ok"),
        msg_id=lambda m: "x\ud800" if m.t == 3 else f"id{m.t}",
        stream=STREAM,
    )
    trade = VenueTrade(e="trade", s="z@trade", t=1, p=1, q=1, E=0)  # type: ignore[arg-type]
    async with sink:
        assert sink(trade, b"1") is None
        with pytest.raises(ValueError, match="subject"):
            sink(trade.model_copy(update={"t": 2}), b"2")
        with pytest.raises(ValueError, match="message id"):
            sink(trade.model_copy(update={"t": 3}), b"3")
        with pytest.raises(ValueError, match="subject"):
            sink(trade.model_copy(update={"t": 5}), b"5")
        assert sink(trade.model_copy(update={"t": 4}), b"4") is None
        assert await sink.flush(5)
    assert (sink.stats.received, sink.stats.stored, sink.stats.reconnects) == (2, 2, 0)


async def test_an_unreachable_bus_is_said_not_retried_in_silence(caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink("nats://user:hunter2secret@127.0.0.1:9", reconnect_initial=0.01, reconnect_max=0.05)
    with caplog.at_level("WARNING", logger="wsclient.sinks"):
        with pytest.raises(TimeoutError):
            await sink.start(timeout=0.5)
        await sink.close(timeout=0.1)
    lines = [r.getMessage() for r in caplog.records if "cannot connect to NATS" in r.getMessage()]
    assert lines, caplog.text
    assert "hunter2secret" not in caplog.text and "hunter2secret" not in repr(sink)
