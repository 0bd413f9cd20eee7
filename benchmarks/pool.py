"""The Pool's benchmarks, one run per process (started through benchmarks/clients.py):

* ``pool_throughput``: 100 trade streams from the benchmark server's ``/trades`` path, on one bare
  ``websockets`` connection (+ ``validate_json``), on one wsclient ``Client``, and on a ``Pool`` of
  4 connections of 25 streams with and without ``dedup_key``; every variant validates into the same
  ``Trade`` model and hands it to the same handler, which checks that every stream's trade ids are
  contiguous. Rate and CPU time per message over the interval from the first message to the last.
* ``resubscribe``: a pool of 1,000 streams against an in-process :class:`~wsclient.testing.VenueServer`
  enforcing 5 messages per second per connection; the time from the venue's restart until it sees all
  1,000 streams subscribed again, against the floor the limits allow (:func:`resubscribe_floor`).
* ``dedup_memory``: tracemalloc of a :class:`~wsclient.dedup.Dedup` and its ``SequenceTracker`` after
  10,000 streams saw messages, then after a reconnect and a move of every stream (an overlap, holds
  released).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal

from pydantic import TypeAdapter

from benchmarks.feed import trade_streams
from benchmarks.profiling import profiled
from wsclient import Message
from wsclient.testing.venue import VenueTrade

__all__ = [
    "POOL_VARIANTS",
    "RESUBSCRIBE_CASES",
    "Trade",
    "dedup_memory",
    "pool_throughput",
    "resubscribe",
    "resubscribe_floor",
]

STREAMS = 100
POOL_CONNECTIONS = 4


class Trade(Message):
    """A Binance-like trade (``b``, ``a`` and ``M`` are in the frames too, ignored)."""

    e: Literal["trade"]
    E: int
    s: str
    t: int
    p: Decimal
    q: Decimal
    T: int
    m: bool


TRADE: TypeAdapter[Trade] = TypeAdapter(Trade)


def subscribe_message() -> Callable[[Sequence[str]], dict[str, Any]]:
    """The venue's subscribe message for a list of streams (Binance's), with fresh ids."""
    ids = itertools.count(1)
    return lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)}


def ignore(_: Any) -> None:
    return None


# ---------------------------------------------------------------------------------------- throughput


class TradeSink:
    """The handler of every variant: count, check each stream's ids are contiguous, time and CPU-stamp
    the first and the last message (``time.process_time()``: the whole process, every thread)."""

    __slots__ = (
        "broken",
        "count",
        "cpu_first",
        "cpu_last",
        "done",
        "finished",
        "last",
        "t_first",
        "t_last",
        "total",
    )

    def __init__(self, total: int, done: Callable[[], object] = lambda: None) -> None:
        self.total = total
        self.count = 0
        self.broken = 0
        self.last: dict[str, int] = {}
        self.t_first = self.t_last = self.cpu_first = self.cpu_last = 0.0
        self.finished = False
        self.done = done

    def __call__(self, msg: Trade) -> None:
        last = self.last
        stream, t = msg.s, msg.t
        if t != last.get(stream, 0) + 1:
            self.broken += 1
        last[stream] = t
        self.count += 1
        if self.count == 1:
            self.t_first = time.perf_counter()
            self.cpu_first = time.process_time()
        elif self.count == self.total:
            self.cpu_last = time.process_time()
            self.t_last = time.perf_counter()
            self.finished = True
            self.done()


async def run_bare(
    url: str, streams: list[str], sink: TradeSink, *, keepalive: bool = True
) -> dict[str, Any]:
    """One ``websockets`` connection subscribed to every stream; ``validate_json`` into Trade.

    ``keepalive=False`` turns websockets' own pings off: under valgrind (benchmarks/instructions.py)
    the process is ~50x slower and would miss its own pong deadline."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=2**20, ping_interval=20 if keepalive else None) as ws:
        await ws.send(json.dumps(subscribe_message()(streams)))
        ack = await ws.recv()
        if not str(ack).startswith('{"result"'):
            raise RuntimeError(f"expected the subscribe ack, got {ack!r:.80}")
        recv = ws.recv
        parse = TRADE.validate_json
        while not sink.finished:
            sink(parse(await recv()))
    return {"connections": 1}


async def run_client(url: str, streams: list[str], sink: TradeSink) -> dict[str, Any]:
    """One wsclient ``Client`` subscribed to every stream, typed handler, no dedup."""
    from wsclient import Client, ClientConfig

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    sink.done = lambda: finished.done() or finished.set_result(None)
    errors: list[str] = []
    client = Client(url, config=ClientConfig(discriminator="e"))
    client.on(Trade, sink)
    client.on_unknown(ignore)  # the subscribe ack
    client.on_error(lambda item, exc: errors.append(repr(exc)))
    client.subscribe(subscribe_message()(streams))
    async with client:
        await finished
    if errors:
        raise RuntimeError(f"{len(errors)} errors in wsclient, first: {errors[0]}")
    return {"connections": 1}


async def run_pool(url: str, streams: list[str], sink: TradeSink, *, dedup: bool) -> dict[str, Any]:
    """A ``Pool`` of 4 connections (25 streams each), typed handler, ``dedup_key`` on or off."""
    from wsclient import ClientConfig, VenueLimits
    from wsclient.pool import Pool

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    sink.done = lambda: finished.done() or finished.set_result(None)
    errors: list[str] = []
    per_conn = math.ceil(len(streams) / POOL_CONNECTIONS)
    pool = Pool(
        url,
        subscribe=subscribe_message(),
        config=ClientConfig(discriminator="e"),
        limits=VenueLimits(streams_per_connection=per_conn, subscribe_batch=per_conn),
        dedup_key=(lambda m: (m.s, m.t)) if dedup else None,
    )
    pool.on(Trade, sink)
    pool.on_unknown(ignore)
    pool.on_error(lambda item, exc: errors.append(repr(exc)))
    pool.add_streams(streams)
    async with pool:
        await finished
        stats = pool.stats
    if errors:
        raise RuntimeError(f"{len(errors)} errors in the pool, first: {errors[0]}")
    if stats.duplicates_dropped or stats.sequence_gaps or stats.held:
        raise RuntimeError(
            f"the pool saw {stats.duplicates_dropped} copies, {stats.sequence_gaps} gaps, held {stats.held}"
        )
    return {"connections": len(stats.shards), "pool_messages_in": stats.messages_in}


#: Variant key -> (label, runner, kwargs); "bare" is the baseline.
POOL_VARIANTS: dict[str, tuple[str, Callable[..., Any], dict[str, Any]]] = {
    "bare": ("websockets + validate_json, 1 connection (baseline)", run_bare, {}),
    "client": ("wsclient Client, typed, 1 connection", run_client, {}),
    "pool-nodedup": ("wsclient Pool, 4 connections, typed, no dedup_key", run_pool, {"dedup": False}),
    "pool": ("wsclient Pool, 4 connections, typed, dedup_key on", run_pool, {"dedup": True}),
}


def pool_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    _, runner, kwargs = POOL_VARIANTS[spec["variant"]]
    if spec.get("no_keepalive") and runner is run_bare:
        kwargs = {**kwargs, "keepalive": False}
    streams = trade_streams(int(spec["streams"]))
    total = len(streams) * int(spec["per_stream"])
    sink = TradeSink(total)
    extra: dict[str, Any] = {}

    async def bounded() -> None:
        async with asyncio.timeout(spec["timeout"]):
            extra.update(await runner(spec["url"], streams, sink, **kwargs))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    profiled(spec.get("profile"), lambda: asyncio.run(bounded()))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if sink.count != total:
        raise RuntimeError(f"received {sink.count} trades, expected {total}")
    if sink.broken:
        raise RuntimeError(f"{sink.broken} trades out of their stream's sequence (lost, copied or reordered)")
    if len(sink.last) != len(streams) or any(t != spec["per_stream"] for t in sink.last.values()):
        raise RuntimeError("not every stream ended at its last trade id")
    elapsed = sink.t_last - sink.t_first
    measured_cpu = sink.cpu_last - sink.cpu_first
    return {
        "rate": (total - 1) / elapsed,
        "us_per_msg": 1e6 * elapsed / (total - 1),
        "cpu_us_per_msg": 1e6 * measured_cpu / (total - 1),
        "cpu_share": measured_cpu / elapsed,
        "elapsed": elapsed,
        "count": sink.count,
        "cpu_s": cpu,
        "wall_s": wall,
        **extra,
    }


# ---------------------------------------------------------------------------------------- resubscribe

#: (streams_per_connection, subscribe_batch) of the resubscribe runs.
RESUBSCRIBE_CASES: tuple[tuple[int, int], ...] = ((250, 50), (250, 200), (1024, 50), (1024, 200))
RESUB_STREAMS = 1000
RESUB_MPS = 5
RESUB_CONNECTS = 2  # per RESUB_CONNECT_WINDOW
RESUB_CONNECT_WINDOW = 1.0
RESUB_BACKOFF = 0.1
#: The goal: every run within the floor plus this (handshakes, the loop, the venue's own processing).
RESUB_TOLERANCE = 0.5


def resubscribe_floor(
    streams: int,
    per_connection: int,
    batch: int,
    *,
    messages_per_second: int,
    message_window: float,
    reserve: int,
    margin: float,
    connects_per_window: int | None,
    connect_window: float,
    backoff: float,
) -> dict[str, Any]:
    """The least time the limits allow from losing every connection to all streams resubscribed.

    Shards of ``per_connection`` streams (the last one the rest) each replay ``ceil(n / batch)``
    subscribe messages; a new connection's budget lets ``messages_per_second - reserve`` of them go at
    once and as many again every ``message_window·(1 + margin)``. Every shard waits ``backoff``, then
    its turn at the connect gate: ``connects_per_window`` connects per ``connect_window·(1 + margin)``.
    The floor gives the gate's first slots to the shards with the most messages; handshakes and the
    network are taken as instant.
    """
    sizes = [per_connection] * (streams // per_connection)
    if streams % per_connection:
        sizes.append(streams % per_connection)
    per_window = messages_per_second - reserve
    window = message_window * (1 + margin)
    messages = [math.ceil(n / batch) for n in sizes]
    pacing = sorted(((math.ceil(k / per_window) - 1) * window for k in messages), reverse=True)
    gate_window = connect_window * (1 + margin)
    slots = [
        (i // connects_per_window) * gate_window if connects_per_window else 0.0 for i in range(len(sizes))
    ]
    ends = [slot + pace for slot, pace in zip(slots, pacing, strict=True)]
    worst = max(range(len(ends)), key=ends.__getitem__)
    return {
        "floor_s": backoff + ends[worst],
        "backoff_s": backoff,
        "gate_s": slots[worst],
        "pacing_s": pacing[worst],
        "shards": len(sizes),
        "messages": sum(messages),
        "messages_per_shard": max(messages),
        "per_window": per_window,
        "window_s": window,
        "gate_window_s": gate_window,
    }


async def _resubscribe(spec: dict[str, Any]) -> dict[str, Any]:
    from wsclient import ClientConfig, Connected, Reconnect, VenueLimits
    from wsclient.pool import Pool
    from wsclient.testing import VenueRules, VenueServer

    per_conn, batch = int(spec["per_connection"]), int(spec["batch"])
    total = int(spec.get("streams", RESUB_STREAMS))
    rules = VenueRules(
        streams_per_connection=per_conn,
        messages_per_second=RESUB_MPS,
        count_control_frames=True,
        connects_per_window=RESUB_CONNECTS,
        connect_window=RESUB_CONNECT_WINDOW,
    )
    limits = VenueLimits(
        streams_per_connection=per_conn,
        subscribe_batch=batch,
        messages_per_second=RESUB_MPS,
        count_control_frames=True,
        heartbeat_reserve=1,
        connects_per_window=RESUB_CONNECTS,
        connect_window=RESUB_CONNECT_WINDOW,
    )
    floor = resubscribe_floor(
        total,
        per_conn,
        batch,
        messages_per_second=RESUB_MPS,
        message_window=limits.message_window,
        reserve=limits.reserve,
        margin=limits.margin,
        connects_per_window=limits.connects_per_window,
        connect_window=limits.connect_window,
        backoff=RESUB_BACKOFF,
    )
    config = ClientConfig(discriminator="e", reconnect=Reconnect(initial_delay=RESUB_BACKOFF, jitter=0.0))
    streams = [f"r{i:04d}@trade" for i in range(total)]
    wanted = set(streams)
    loop = asyncio.get_running_loop()
    opened: list[float] = []  # Connected: the replay went out, the shard is OPEN
    counts = {"trades": 0, "gaps": 0}

    def on_trade(_: VenueTrade) -> None:
        counts["trades"] += 1

    def on_gap(_: Any) -> None:
        counts["gaps"] += 1

    # The streams run at 1 trade/s each (1,000 msgs/s in all) while the pool is connected.
    async with VenueServer(rules, rate=spec.get("rate", 1.0)) as venue:

        def all_subscribed() -> bool:
            names = [s for info in venue.connections.values() for s in info.streams]
            return len(names) == total and set(names) == wanted

        pool = Pool(
            venue.url,
            subscribe=subscribe_message(),
            config=config,
            limits=limits,
            dedup_key=lambda m: (m.s, m.t),
        )
        pool.on(VenueTrade, on_trade)
        pool.on_gap(on_gap)
        pool.on_unknown(ignore)
        pool.on_event(lambda e: opened.append(loop.time()) if isinstance(e, Connected) else None)
        pool.add_streams(streams)
        async with pool:
            t_start = loop.time()
            await venue.wait_until(all_subscribed, timeout=60, what="the first subscription")
            first_s = loop.time() - t_start
            # Quiet until the connect gate's window and the message windows are empty again.
            await asyncio.sleep(max(floor["gate_window_s"], floor["window_s"]) + 0.2)
            before_msgs = venue.subscribe_messages_total
            target = before_msgs + floor["messages"]
            before_trades = counts["trades"]
            del opened[:]
            t0 = loop.time()
            await venue.restart()
            down_s = loop.time() - t0
            await venue.wait_until(
                lambda: venue.subscribe_messages_total >= target and all_subscribed(),
                timeout=spec["timeout"],
                what="all streams subscribed again",
            )
            elapsed = loop.time() - t0
            resubscribed_with = venue.subscribe_messages_total - before_msgs
            stats = pool.stats
    return {
        "resubscribe_s": elapsed,
        "over_floor_s": elapsed - floor["floor_s"],
        "floor": floor,
        "first_subscribe_s": first_s,
        "restart_s": down_s,
        "opened_after_s": [t - t0 for t in opened],
        "subscribe_messages": resubscribed_with,
        "violations": dict(venue.violations),
        "total_violations": venue.total_violations,
        "trades_before": before_trades,
        "gaps": counts["gaps"],
        "budget_waits": stats.budget_waits,
        "connect_waits": stats.connect_waits,
        "shards": len(stats.shards),
    }


def resubscribe(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_resubscribe(spec))


# ---------------------------------------------------------------------------------------- dedup memory


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def dedup_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Bytes per stream of a Dedup (and its SequenceTracker), as the router drives it.

    Stream names and trade ids are made afresh for every message, as parsing does, so the state keeps
    the key string of a stream's first message and an int (trade ids above 2**30, as at a venue).
    """
    from wsclient.dedup import Dedup, Judgement
    from wsclient.routing import SequenceTracker

    n, per_stream = int(spec.get("streams", 10_000)), int(spec.get("messages", 20))
    base = 3_000_000_000
    width = len(str(n - 1))

    def name(i: int) -> str:
        return f"s{i:0{width}d}@trade"

    tracemalloc.start()
    m0 = _traced()
    dedup = Dedup(SequenceTracker())
    judge, observe = dedup.judge, dedup.sequences.observe
    deliver, hold = Judgement.DELIVER, Judgement.HOLD
    for i in range(n):
        for seq in range(base, base + per_stream):  # a fresh int per message, as parsed
            stream = name(i)
            if judge(stream, seq, merging=False) is deliver:
                observe(stream, seq)
    steady = _traced() - m0

    # A reconnect, then every stream moved to another link: the new link runs 3 ahead (held), the old
    # one brings the next trade, the held ones follow; then the move ends and both links go on.
    dedup.sequences.mark_reconnect()
    for i in range(n):
        dedup.begin_move(name(i))
    seq = base + per_stream
    held = 0
    for i in range(n):
        for ahead in (seq + 1, seq + 2, seq + 3):
            stream = name(i)
            if judge(stream, ahead, merging=True) is hold:
                dedup.hold(stream, ahead, ("message", ahead))
                held += 1
    peak_held = dedup.held_now
    for i in range(n):
        stream = name(i)
        if judge(stream, seq, merging=True) is deliver:
            observe(stream, seq)
        for _, ahead in dedup.release(stream):  # delivered in order: the tracker sees them
            observe(stream, ahead)
    for i in range(n):
        for _ in dedup.end_move(name(i)):
            pass
    for i in range(n):
        for seq in range(base + per_stream + 4, base + per_stream + 8):
            stream = name(i)
            if judge(stream, seq, merging=False) is deliver:
                observe(stream, seq)
    after = _traced() - m0
    tracemalloc.stop()
    if held != 3 * n or peak_held != 3 * n or dedup.held_now or dedup.dropped:
        raise RuntimeError(f"the overlap did not go as planned: held {held}, now {dedup.held_now}")
    if dedup.sequences.gaps or dedup.sequences.resets:
        raise RuntimeError("the simulated streams had gaps or resets")
    tracker = dedup.sequences
    key = sys.getsizeof(name(0))
    return {
        "streams": n,
        "messages_per_stream": per_stream,
        "steady_b": steady / n,
        "after_overlap_b": after / n,
        "key_b": key,
        "mark_b": sys.getsizeof(base),
        # Hash tables that keep their size once emptied (CPython dicts and sets do not shrink).
        "tables_b": {
            "SequenceTracker._last": sys.getsizeof(tracker._last) / n,
            "SequenceTracker._after_reconnect": sys.getsizeof(tracker._after_reconnect) / n,
            "Dedup._held": sys.getsizeof(dedup._held) / n,
            "Dedup._moving": sys.getsizeof(dedup._moving) / n,
        },
    }
