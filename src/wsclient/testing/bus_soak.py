"""Bus soak: a venue's trades through a :class:`~wsclient.Client` into NATS JetStream, faults on both sides.

The path is ``VenueServer -> ChaosProxy -> Client(dedup_key) -> NatsJetStreamSink -> ChaosProxy ->
nats-server`` (a real one, JetStream on file storage). :func:`run_bus_soak` subscribes the client to
a few trade streams and hands every trade to the sink, through a recorder that notes, per subject,
the trade ids in the order the handler saw them. Meanwhile it injects faults one after another, with
calm periods between them, on a schedule drawn from a seeded RNG:

* venue side: TCP drops (FIN) and resets (RST) at the proxy, black holes (until the client declares
  the link dead, and a little longer), latency spikes, venue restarts;
* bus side: drops and resets at the bus proxy, black holes (the sink's ``ack_timeout`` fires, then
  the NATS pings end the connection, and a little longer), stalls (the server stops reading: the
  window is resent behind the stalled bytes, nothing is lost), latency spikes (some longer than
  ``ack_timeout`` per round trip), crash-restarts of ``nats-server`` (SIGKILL, the store kept).

Why a bus black hole lasts until the connection is given up: the proxy discards what it reads while
black-holed, whole NATS publishes among them, and a link lifted before the pings fail goes on with
the protocol intact. Publishes lost in the middle of a live connection while later ones are stored
can only be stored after those later ones when resent: no client can repair that order (the sink
counts it in ``stats.reordered``). TCP never loses bytes on a live connection, it retransmits, so a
real outage that short is a stall or a latency spike, which the soak injects as such.

At the end it closes the client, then the sink (a clean close), reads the JetStream stream back
directly from the server and returns a :class:`BusSoakReport`; :attr:`BusSoakReport.failures`
lists every broken promise:

* **Exactly once.** Every message the handler handed to the sink is in the stream once: no copy,
  none missing, nothing the handler never saw. ``stats.abandoned`` is 0 after the clean close.
* **Order.** Per subject, the stream holds the ids in the order the handler saw them (one feeder:
  the sink's go-back-N keeps it); an inversion is a failure. ``stats.reordered`` is reported.
* **Venue gaps only across reconnects.** The client's ``on_gap`` reports only gaps with
  ``across_reconnect``, and as many as the handed ids show.
* **Bounded memory.** The sink's ``pending`` never exceeds ``max_pending + 1``; tasks, open file
  descriptors and traced memory, sampled during calm periods, do not grow from the first quarter of
  the run to the last.
* **Recovery.** After a venue fault is lifted the client is ``OPEN`` again within
  ``max_delay + open_timeout + slack``; after a bus fault is lifted the sink is connected again
  and ``stored`` advances within ``reconnect_max + connect_timeout + slack`` (a black hole must
  also make an acknowledgement time out within ``ack_timeout + slack``).

Run it from the command line (``make soak-bus DURATION=600 SEED=7`` does the same)::

    python -m wsclient.testing.bus_soak --duration 600 --seed 7

Requires the ``nats`` extra and a ``nats-server`` binary (see :mod:`wsclient.testing.nats`).
"""

from __future__ import annotations

import array
import asyncio
import random
import statistics
import sys
import tracemalloc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from ..client import Client
from ..codec import Data
from ..config import ClientConfig, Heartbeat, Reconnect
from ..events import ClientEvent, Connected, ConnectFailed, Disconnected, GaveUp
from ..routing import SequenceGap
from ..sinks.base import SinkStats
from ..sinks.nats import JetStreamSpec, NatsJetStreamSink
from ..state import ConnectionState
from . import soak as _soak
from .nats import NatsServer
from .proxy import ChaosProxy
from .soak import ResourceFigures, SoakChecks, soak_parser
from .venue import VenueServer, VenueTrade

__all__ = [
    "BUS_FAULT_KINDS",
    "BusFaultKind",
    "BusSoakReport",
    "SinkSettings",
    "default_bus_soak_config",
    "main",
    "run_bus_soak",
]

BusFaultKind = Literal[
    "venue_drop",
    "venue_reset",
    "venue_blackhole",
    "venue_latency",
    "venue_restart",
    "bus_drop",
    "bus_reset",
    "bus_blackhole",
    "bus_stall",
    "bus_latency",
    "nats_crash",
]

BUS_FAULT_KINDS: Final[tuple[BusFaultKind, ...]] = get_args(BusFaultKind)
"""Every kind of fault the bus soak injects; each appears once per shuffled round of the schedule."""

_VENUE_SIDE: Final[frozenset[str]] = frozenset(k for k in BUS_FAULT_KINDS if k.startswith("venue_"))
# Faults that always end the live connection, so recovery means a new one.
_RECONNECTS: Final[frozenset[str]] = frozenset(
    {"venue_drop", "venue_reset", "venue_blackhole", "venue_restart"}
)
_BUS_RECONNECTS: Final[frozenset[str]] = frozenset({"bus_drop", "bus_reset", "nats_crash"})

_STREAM: Final = JetStreamSpec(name="SOAK", subjects=("soak.>",), duplicate_window=300.0)


def _subject(m: VenueTrade) -> str:
    return f"soak.trades.{m.s.split('@')[0]}"


def _msg_id(m: VenueTrade) -> str:
    return f"{m.s}:{m.t}"


def default_bus_soak_config() -> ClientConfig:
    """The client settings of the bus soak: the chaos soak's fast heartbeat and backoff, the venue's
    ``"e"`` tag, and a small inbound queue, so that a bus outage pushes back on the venue link soon.
    """
    return ClientConfig(
        discriminator="e",
        heartbeat=Heartbeat(interval=0.25, timeout=0.5),
        reconnect=Reconnect(initial_delay=0.05, max_delay=1.0, jitter=0.05, reset_after=1.0),
        open_timeout=1.0,
        close_timeout=0.5,
        inbound_queue=500,
    )


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """The soak's :class:`NatsJetStreamSink` settings: short timeouts, so a run sees each at work."""

    max_pending: int = 256
    ack_timeout: float = 0.5
    ping_interval: float = 1.0
    reconnect_initial: float = 0.05
    reconnect_max: float = 1.0
    connect_timeout: float = 1.0


@dataclass(slots=True)
class BusSoakReport:
    """What a bus soak run did and saw. :attr:`failures` is empty when every check passed."""

    duration: float
    seed: int
    faults: dict[str, int] = field(default_factory=dict)
    streams: int = 0
    handed: int = 0
    """Messages the handler handed to the sink (and the sink took)."""
    in_stream: int = 0
    """Messages the JetStream stream holds at the end."""
    sink: SinkStats | None = None
    """The sink's counters after its close."""
    max_pending: int = 0
    peak_pending: int = 0
    """Largest ``stats.pending`` seen right after a message was handed over."""
    copies: int = 0
    missing: int = 0
    unknown: int = 0
    """Messages in the stream the handler never handed over."""
    inversions: int = 0
    """Messages stored after one the handler saw later (per subject)."""
    client_connects: int = 0
    client_reconnects: int = 0
    venue_gaps: int = 0
    """Jumps in the handed trade ids (a stream's ids skipped while the client was away)."""
    venue_missed: int = 0
    client_gaps_reported: int = 0
    venue_recover_times: list[float] = field(default_factory=list)
    venue_recover_bound: float = 0.0
    bus_recover_times: list[float] = field(default_factory=list)
    bus_recover_bound: float = 0.0
    ack_timeouts_seen: list[float] = field(default_factory=list)
    """Per bus black hole, time from its start to the sink's first acknowledgement timeout (s)."""
    resource_samples: int = 0
    resources: list[ResourceFigures] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    @property
    def max_bus_recover(self) -> float:
        """Longest time from a bus fault being lifted to the sink storing again (s)."""
        return max(self.bus_recover_times, default=0.0)

    @property
    def max_venue_recover(self) -> float:
        """Longest time from a venue fault being lifted to the client being ``OPEN`` again (s)."""
        return max(self.venue_recover_times, default=0.0)

    def format(self) -> str:
        """The report as printed by ``python -m wsclient.testing.bus_soak``."""
        venue = {k: v for k, v in self.faults.items() if k in _VENUE_SIDE}
        bus = {k: v for k, v in self.faults.items() if k not in _VENUE_SIDE}

        def kinds(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

        s = self.sink
        lines = [
            f"bus soak: {self.duration:.1f}s, seed {self.seed}: {'OK' if self.ok else 'FAILED'}",
            f"faults injected: {sum(self.faults.values())}; venue side {sum(venue.values())} "
            f"({kinds(venue)}); bus side {sum(bus.values())} ({kinds(bus)})",
            f"messages handed to the sink: {self.handed} over {self.streams} subjects; in the stream "
            f"{self.in_stream}: copies {self.copies}, missing {self.missing}, never handed "
            f"{self.unknown}, inversions {self.inversions}",
        ]
        if s is not None:
            lines += [
                f"sink: stored {s.stored}, duplicates dropped by JetStream {s.duplicates}, retries "
                f"{s.retries}, ack timeouts {s.timeouts}, refused {s.errors}, waits (back-pressure) "
                f"{s.waits}, reconnects {s.reconnects}, reordered {s.reordered}, abandoned {s.abandoned}",
            ]
        acks = self.ack_timeouts_seen
        lines += [
            f"sink window: peak pending {self.peak_pending} (max_pending {self.max_pending})",
            f"client: {self.client_connects} connects ({self.client_reconnects} reconnects); venue gaps "
            f"{self.venue_gaps} ({self.venue_missed} trades missed), on_gap reported "
            f"{self.client_gaps_reported}, all across reconnects",
            f"venue recovery: max {self.max_venue_recover:.3f}s over {len(self.venue_recover_times)} "
            f"(bound {self.venue_recover_bound:.2f}s)",
            f"bus recovery (connected, storing again): max {self.max_bus_recover:.3f}s, mean "
            f"{statistics.fmean(self.bus_recover_times) if self.bus_recover_times else 0.0:.3f}s over "
            f"{len(self.bus_recover_times)} (bound {self.bus_recover_bound:.2f}s); first ack timeout "
            f"in a black hole after max {max(acks, default=0.0):.3f}s over {len(acks)}",
            f"resources sampled {self.resource_samples} times",
            *(figure.format() for figure in self.resources),
        ]
        lines += [f"FAILURE: {failure}" for failure in self.failures]
        return "\n".join(lines)


class _Handed:
    """The handler: hands each trade to the sink and records, per subject, the ids it handed."""

    wants_frame = True  # read by client.on: the sink publishes the raw frame

    def __init__(self, soak: _BusSoak, sink: NatsJetStreamSink) -> None:
        self.soak = soak
        self.sink = sink
        # Compact records (8 bytes an id), allocated in this module: left out of the memory figures.
        self.ids: dict[str, array.array[int]] = defaultdict(lambda: array.array("q"))

    def __call__(self, msg: VenueTrade, frame: Data | None = None) -> Awaitable[None] | None:
        room = self.sink(msg, frame)
        ids = self.ids[_subject(msg)]
        if ids:
            last = ids[-1]
            if msg.t <= last:
                self.soak.fail(f"{msg.s}: the handler saw trade {msg.t} after {last}")
            elif msg.t != last + 1:
                self.soak.report.venue_gaps += 1
                self.soak.report.venue_missed += msg.t - last - 1
        ids.append(msg.t)
        pending = self.sink.stats.pending
        report = self.soak.report
        if pending > report.peak_pending:
            report.peak_pending = pending
            if pending > report.max_pending + 1:
                self.soak.fail(
                    f"the sink held {pending} unacknowledged messages (max_pending {report.max_pending})"
                )
        return room


class _BusSoak(SoakChecks[BusSoakReport]):
    """One run: the components, the bookkeeping, the schedule and the checks."""

    def __init__(
        self,
        duration: float,
        seed: int,
        *,
        config: ClientConfig,
        sink: SinkSettings,
        rate: float,
        streams: int,
        calm: tuple[float, float],
        slack: float,
        task_tolerance: int,
        fd_tolerance: int,
        memory_tolerance: int,
        faults: Sequence[BusFaultKind],
    ) -> None:
        unknown = sorted(set(faults) - set(BUS_FAULT_KINDS))
        if unknown or not faults:
            raise ValueError(f"faults must be a non-empty selection of {BUS_FAULT_KINDS}, got {faults!r}")
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams!r}")
        self.duration = duration
        self.rng = random.Random(seed)
        self.config = config
        self.settings = sink
        self.rate = rate
        self.stream_names = [f"s{i}@trade" for i in range(streams)]
        self.calm = calm
        report = BusSoakReport(duration=duration, seed=seed, max_pending=sink.max_pending)
        super().__init__(report, duration, task_tolerance, fd_tolerance, memory_tolerance)
        self.faults: tuple[BusFaultKind, ...] = tuple(dict.fromkeys(faults))
        rc = config.reconnect
        self.recover_bound = rc.max_delay + config.open_timeout + slack
        self.report.venue_recover_bound = self.recover_bound
        hb = config.heartbeat
        self.detect_bound = hb.interval + hb.timeout + slack
        self.bus_bound = sink.reconnect_max + sink.connect_timeout + slack
        self.report.bus_recover_bound = self.bus_bound
        self.ack_bound = sink.ack_timeout + slack
        # nats-py ends a connection once two pings are outstanding at a ping tick.
        self.dead_bound = 4 * sink.ping_interval + slack
        self.connected = 0
        self.disconnected = 0
        self.client_gaps = 0
        self.t0 = 0.0
        self.handed: _Handed | None = None
        self.venue: VenueServer | None = None

    # ------------------------------------------------------------------ events

    def on_event(self, event: ClientEvent) -> None:
        if isinstance(event, Connected):
            self.connected += 1
        elif isinstance(event, Disconnected):
            self.disconnected += 1
            if not event.will_retry:
                self.fail(f"connection lost without retry: {event}")
        elif isinstance(event, ConnectFailed):
            if not event.will_retry:
                self.fail(f"connect attempt failed without retry: {event}")
        elif isinstance(event, GaveUp):
            self.fail(f"client gave up: {event}")
        self.changed.set()

    def on_gap(self, gap: SequenceGap) -> None:
        self.client_gaps += 1
        if gap.kind != "gap" or not gap.across_reconnect:
            self.fail(f"client reported a sequence {gap.kind} not across a reconnect: {gap}")

    # ------------------------------------------------------------------ the run

    async def run(self) -> BusSoakReport:
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            tracemalloc.start()
        try:
            async with (
                NatsServer() as nats_server,
                ChaosProxy("127.0.0.1", nats_server.port) as bus_proxy,
                VenueServer(rate=self.rate, max_buffer=1_000_000) as venue,
                ChaosProxy("127.0.0.1", venue.port) as venue_proxy,
            ):
                await self.drive(nats_server, bus_proxy, venue, venue_proxy)
        finally:
            if started_tracing:
                tracemalloc.stop()
        return self.report

    async def drive(
        self, nats_server: NatsServer, bus_proxy: ChaosProxy, venue: VenueServer, venue_proxy: ChaosProxy
    ) -> None:
        loop = asyncio.get_running_loop()
        report = self.report
        settings = self.settings
        sink = NatsJetStreamSink(
            f"nats://127.0.0.1:{bus_proxy.port}",
            subject=_subject,
            msg_id=_msg_id,
            stream=_STREAM,
            max_pending=settings.max_pending,
            ack_timeout=settings.ack_timeout,
            ping_interval=settings.ping_interval,
            reconnect_initial=settings.reconnect_initial,
            reconnect_max=settings.reconnect_max,
            connect_timeout=settings.connect_timeout,
            name="bus-soak",
        )
        handed = self.handed = _Handed(self, sink)
        self.venue = venue
        client = Client(venue_proxy.url("/ws"), config=self.config, dedup_key=lambda m: (m.s, m.t))
        client.on_event(self.on_event)
        client.on(VenueTrade, handed)
        client.on_unknown(lambda frame: None)  # the venue's subscription acknowledgements
        client.on_gap(self.on_gap)
        client.subscribe({"method": "SUBSCRIBE", "params": self.stream_names, "id": 1})
        started = loop.time()
        span = 0.0
        try:
            await sink.start(timeout=self.bus_bound + 10.0)
            async with client:
                if await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound):
                    span = await self.exercise(
                        nats_server, bus_proxy, venue, venue_proxy, client, sink, started
                    )
                else:
                    self.fail(f"the client did not open at the start (state {client.state.value})")
                client_stats = client.stats
        finally:
            # A clean close: the client has stopped handing over; every acknowledgement is awaited.
            await sink.close(timeout=self.bus_bound + 10.0)
        report.duration = loop.time() - started
        report.sink = stats = sink.stats
        report.client_connects = client_stats.connects
        report.client_reconnects = client_stats.reconnects
        report.client_gaps_reported = self.client_gaps
        if stats.abandoned:
            self.fail(f"the sink abandoned {stats.abandoned} messages at a clean close")
        report.handed = sum(len(ids) for ids in handed.ids.values())
        if stats.received != report.handed:
            self.fail(f"the sink received {stats.received} messages, the handler handed {report.handed}")
        if self.client_gaps != report.venue_gaps:
            self.fail(
                f"the client's on_gap reported {self.client_gaps} gaps, the handed ids show "
                f"{report.venue_gaps}"
            )
        self.judge_resources(span)
        await self.judge_stream(nats_server.url, handed.ids)

    async def exercise(
        self,
        nats_server: NatsServer,
        bus_proxy: ChaosProxy,
        venue: VenueServer,
        venue_proxy: ChaosProxy,
        client: Client,
        sink: NatsJetStreamSink,
        started: float,
    ) -> float:
        """Faults, then a calm tail; return the span of the fault phase (for the resource quarters)."""
        loop = asyncio.get_running_loop()
        t0 = self.t0 = loop.time()
        tail = max(self.recover_bound, self.bus_bound) + 1.0
        chaos_until = t0 + max(0.0, self.duration - (t0 - started) - tail)
        round_: list[BusFaultKind] = []
        await self.settle(bus_proxy, venue_proxy, client, sink)
        while loop.time() < chaos_until:
            if not round_:
                round_ = list(self.faults)
                self.rng.shuffle(round_)
            kind = round_.pop()
            if kind in _VENUE_SIDE:
                await self.venue_fault(kind, venue, venue_proxy, client)
            else:
                await self.bus_fault(kind, nats_server, bus_proxy, sink)
            await self.settle(bus_proxy, venue_proxy, client, sink)
        span = loop.time() - t0
        if not await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound):
            self.fail(f"client not OPEN after the faults stopped (state {client.state.value})")
        mark = sink.stats.stored
        if not await _wait_until(lambda: sink.stats.connected and sink.stats.stored > mark, self.bus_bound):
            self.fail("the sink stored nothing after the faults stopped")
        end = started + self.duration
        if end > loop.time():
            await asyncio.sleep(end - loop.time())  # the calm tail: trades keep flowing
        return span

    async def settle(
        self, bus_proxy: ChaosProxy, venue_proxy: ChaosProxy, client: Client, sink: NatsJetStreamSink
    ) -> None:
        """A calm period: nothing disturbed; resources sampled once old connections are gone."""
        loop = asyncio.get_running_loop()
        calm = self.rng.uniform(*self.calm)
        end = loop.time() + calm
        # Old connections take a moment to be torn down at the proxies (FIN grace), and a backlog
        # built up during an outage (the venue's outbox, the proxy's queues, the client's inbound
        # queue, the sink's window) a moment to drain; sampling before that would count them as growth.
        quiet = await _wait_until(
            lambda: (
                venue_proxy.connections == 1
                and bus_proxy.connections == 1
                and sink.stats.pending < self.settings.max_pending // 4
                and self.caught_up()
            ),
            timeout=calm,
        )
        if quiet and client.state is ConnectionState.OPEN and sink.stats.connected:
            self.sample(loop.time() - self.t0)
        remaining = end - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)  # the rest of the calm period

    def caught_up(self) -> bool:
        """Whether the handler has seen every stream's trades up to half a second ago."""
        handed, venue = self.handed, self.venue
        if handed is None or venue is None:
            return False
        lag = max(2.0, self.rate / 2)
        for name in self.stream_names:
            ids = handed.ids.get(f"soak.trades.{name.split('@')[0]}")
            if not ids or ids[-1] < venue.sent(name) - lag:
                return False
        return True

    # ------------------------------------------------------------------ faults

    def count(self, kind: str) -> None:
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1

    async def venue_fault(
        self, kind: BusFaultKind, venue: VenueServer, proxy: ChaosProxy, client: Client
    ) -> None:
        """Inject one fault between the venue and the client, lift it, time the client's recovery."""
        loop = asyncio.get_running_loop()
        rng = self.rng
        before = self.connected
        if kind == "venue_drop":
            await proxy.drop_all()
        elif kind == "venue_reset":
            await proxy.reset()
        elif kind == "venue_restart":
            await venue.restart(down_for=rng.uniform(0.0, 1.0))
        elif kind == "venue_blackhole":
            lost = self.disconnected
            proxy.blackhole(True)
            try:
                if not await self.wait_for(lambda: self.disconnected > lost, self.detect_bound):
                    self.fail(
                        f"a black-holed venue link was not declared dead within {self.detect_bound:.2f}s"
                    )
                await asyncio.sleep(rng.uniform(0.0, 1.0))  # the fault's duration: reconnects run into it
            finally:
                proxy.blackhole(False)
        elif kind == "venue_latency":
            proxy.latency = rng.uniform(0.05, 0.3)
            try:
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # the fault's duration
            finally:
                proxy.latency = 0.0
        self.count(kind)
        lifted = loop.time()
        if kind in _RECONNECTS:
            back = await self.wait_for(
                lambda: self.connected > before and client.state is ConnectionState.OPEN, self.recover_bound
            )
        else:
            back = await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound)
        self.report.venue_recover_times.append(loop.time() - lifted)
        if not back:
            self.fail(
                f"client not OPEN again {self.recover_bound:.2f}s after a {kind} was lifted "
                f"(state {client.state.value})"
            )

    async def bus_fault(
        self, kind: BusFaultKind, nats_server: NatsServer, proxy: ChaosProxy, sink: NatsJetStreamSink
    ) -> None:
        """Inject one fault between the sink and nats-server, lift it, time the sink's recovery."""
        loop = asyncio.get_running_loop()
        rng = self.rng
        before = sink.stats.reconnects
        if kind == "bus_drop":
            await proxy.drop_all()
        elif kind == "bus_reset":
            await proxy.reset()
        elif kind == "nats_crash":
            await nats_server.restart(crash=True, down_for=rng.uniform(0.0, 1.5))
        elif kind == "bus_blackhole":
            timeouts = sink.stats.timeouts
            proxy.blackhole(True)
            dark = loop.time()
            try:
                if await _wait_until(lambda: sink.stats.timeouts > timeouts, self.ack_bound):
                    self.report.ack_timeouts_seen.append(loop.time() - dark)
                else:
                    self.fail(
                        f"no acknowledgement timed out within {self.ack_bound:.2f}s of a bus black hole"
                    )
                # Dark until the NATS pings end the connection (see the module's note on why).
                if not await _wait_until(lambda: not sink.stats.connected, self.dead_bound):
                    self.fail(f"a black-holed bus link was still up {self.dead_bound:.2f}s later")
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # the fault's duration: reconnects run into it
            finally:
                proxy.blackhole(False)
        elif kind == "bus_stall":
            # The server stops reading: publishes (and their resends after ack_timeout) queue up in
            # order, the acknowledgements of those read before keep coming. Lifted before or after
            # the NATS pings give the connection up; either way nothing is lost.
            timeouts = sink.stats.timeouts
            proxy.stall(True)
            try:
                if not await _wait_until(lambda: sink.stats.timeouts > timeouts, self.ack_bound):
                    self.fail(f"no acknowledgement timed out within {self.ack_bound:.2f}s of a bus stall")
                await asyncio.sleep(rng.uniform(0.0, 2.5))  # the fault's duration
            finally:
                proxy.stall(False)
        elif kind == "bus_latency":
            # Up to 0.6 s each way: a round trip can exceed ack_timeout, so the window is resent.
            proxy.latency = rng.uniform(0.05, 0.6)
            try:
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # the fault's duration
            finally:
                proxy.latency = 0.0
        self.count(kind)
        lifted = loop.time()
        mark = sink.stats.stored

        def storing() -> bool:
            stats = sink.stats
            reconnected = stats.reconnects > before or kind not in _BUS_RECONNECTS
            return reconnected and stats.connected and stats.stored > mark

        back = await _wait_until(storing, self.bus_bound)
        self.report.bus_recover_times.append(loop.time() - lifted)
        if not back:
            stats = sink.stats
            self.fail(
                f"the sink was not storing again {self.bus_bound:.2f}s after a {kind} was lifted "
                f"(connected {stats.connected}, reconnects {stats.reconnects - before}, "
                f"pending {stats.pending})"
            )

    # ------------------------------------------------------------------ the stream

    async def judge_stream(self, url: str, handed: dict[str, array.array[int]]) -> None:
        """Read the stream back and compare it, per subject, with what the handler handed over."""
        self.compare(handed, await _read_stream(url, _STREAM.name, "soak.>"))

    def compare(self, handed: dict[str, array.array[int]], stored: dict[str, array.array[int]]) -> None:
        """Per subject, the stored ids must be the handed ones: once each, in the handed order."""
        report = self.report
        report.streams = len(handed)
        report.in_stream = sum(len(ids) for ids in stored.values())
        for subject in sorted(set(handed) | set(stored)):
            want = handed.get(subject, array.array("q"))
            got = stored.get(subject, array.array("q"))
            if want == got:
                continue
            want_set, got_set = set(want), set(got)
            copies = len(got) - len(got_set)
            missing = len(want_set - got_set)
            unknown = len(got_set - want_set)
            inversions = _inversions(got)
            report.copies += copies
            report.missing += missing
            report.unknown += unknown
            report.inversions += inversions
            self.fail(
                f"{subject}: the stream holds {len(got)} ids, the handler handed {len(want)}: {copies} "
                f"copies, {missing} missing, {unknown} never handed, {inversions} out of order"
                f"{_first_difference(want, got)}"
            )


def _inversions(ids: Sequence[int]) -> int:
    """Ids stored after a higher one (the handed ids of a subject only grow)."""
    count = high = 0
    for t in ids:
        if t < high:
            count += 1
        high = max(high, t)
    return count


def _first_difference(want: Sequence[int], got: Sequence[int]) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            handed, stored = list(want[i : i + 5]), list(got[i : i + 5])
            return f"; first difference at position {i}: handed {handed}, stored {stored}"
    return ""


async def _read_stream(url: str, stream: str, subjects: str) -> dict[str, array.array[int]]:
    """Per subject, the trade ids (from ``Nats-Msg-Id``) in stream order."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    out: dict[str, array.array[int]] = defaultdict(lambda: array.array("q"))
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        count = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(
            subjects,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        read = 0
        while read < count:
            for msg in await sub.fetch(min(2000, count - read), timeout=10):
                read += 1
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                out[msg.subject].append(int(msg_id.rpartition(":")[2]))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return dict(out)


async def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Bounded wait for a condition on the sink or a proxy, which offer no event to wait on."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - no event exists for these conditions
                await asyncio.sleep(0.005)
    except TimeoutError:
        return False
    return True


def _traced_memory() -> int:
    """Bytes traced by ``tracemalloc``, except what the soaks allocated: their own records grow by
    design and are not the client's or the sink's memory."""
    ours = [tracemalloc.Filter(False, path) for path in (__file__, _soak.__file__)]
    snapshot = tracemalloc.take_snapshot().filter_traces(ours)
    return sum(trace.size for trace in snapshot.traces)


async def run_bus_soak(
    duration: float,
    seed: int,
    *,
    config: ClientConfig | None = None,
    sink: SinkSettings | None = None,
    rate: float = 25.0,
    streams: int = 4,
    calm: tuple[float, float] = (0.5, 1.5),
    slack: float = 3.0,
    task_tolerance: int = 3,
    fd_tolerance: int = 3,
    memory_tolerance: int = 128 * 1024,
    faults: Sequence[BusFaultKind] = BUS_FAULT_KINDS,
) -> BusSoakReport:
    """Run a bus soak for ``duration`` seconds with the fault schedule drawn from ``seed``.

    Args:
        duration: Length of the whole run in seconds; faults stop ``max(recovery bounds) + 1``
            seconds before the end, so both sides can be seen recovering.
        seed: Seed of the fault schedule (kinds, durations, latencies, calm periods).
        config: Client settings; :func:`default_bus_soak_config` when omitted.
        sink: The sink's settings; :class:`SinkSettings` defaults when omitted.
        rate: Trades per second per stream at the venue.
        streams: Trade streams (one subject each).
        calm: Range of the calm period between two faults, in seconds.
        slack: Scheduling slack added to every time bound (a loaded machine is slow).
        task_tolerance: Allowed growth of the median task count, first quarter to last.
        fd_tolerance: Allowed growth of the median count of open file descriptors.
        memory_tolerance: Allowed growth of the median traced memory, in bytes.
        faults: The kinds of fault to inject (all of :data:`BUS_FAULT_KINDS` by default).

    Returns:
        The :class:`BusSoakReport`; a failed check is listed in ``report.failures``, not raised.
        ``tracemalloc`` tracing is started for the run unless it already runs.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    soak = _BusSoak(
        duration,
        seed,
        config=config if config is not None else default_bus_soak_config(),
        sink=sink if sink is not None else SinkSettings(),
        rate=rate,
        streams=streams,
        calm=calm,
        slack=slack,
        task_tolerance=task_tolerance,
        fd_tolerance=fd_tolerance,
        memory_tolerance=memory_tolerance,
        faults=faults,
    )
    return await soak.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run a bus soak, print its report, exit 1 if a check failed."""
    parser = soak_parser(
        "python -m wsclient.testing.bus_soak",
        "Chaos soak of a venue feed through wsclient into NATS JetStream.",
        BUS_FAULT_KINDS,
        rate=25.0,
        rate_unit="trades/s",
    )
    parser.add_argument("--streams", type=int, default=4, help="trade streams (default 4)")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_bus_soak(args.duration, args.seed, rate=args.rate, streams=args.streams, faults=args.faults)
    )
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
