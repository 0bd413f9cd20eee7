"""Chaos soak: a :class:`~wsclient.Client` against a :class:`FeedServer` behind a :class:`ChaosProxy`.

:func:`run_soak` connects a client through the proxy, subscribes it to a few streams, makes it send
numbered application messages (``{"op": "note", "n": k}``) at a steady pace, and meanwhile injects
faults one after another on a schedule drawn from a seeded RNG: TCP drops (FIN) at the proxy and at
the server, resets (RST), black holes, latency spikes, server restarts (close 1012) and handshake
rejections (503/429 with ``Retry-After``). After each fault it waits for the client to come back and
lets it run calmly for a moment before the next one. At the end it checks what a feed and a bot rely
on and returns a :class:`SoakReport`; :attr:`SoakReport.failures` lists every broken promise:

* **Sends.** Every ``send()`` either reached the server, raised (``ConnectionLostError``,
  ``OutboxFullError``), or was reported in a ``MessageDropped`` event, with one exception no
  WebSocket client can avoid: a frame handed to a socket that dies before the bytes reach the peer.
  Those are counted as *lost in flight* and accepted only when they sit at a connection boundary
  (the server saw the connection end between the last note before them and the first one after);
  a note missing in the middle of one connection is a failure. Notes arrive in order, never twice.
* **Inbound sequence.** Each stream's ``seq`` (global at the server) may jump only where the client
  resubscribed on a new connection (the subscription ack marks the boundary in the raw frames); a
  jump within one connection, or a number going back, is a failure. The client's own gap detection
  (``on_gap``) must agree: every gap it reports straddles a reconnect.
* **One connection at a time**: the server never sees two live connections from this client.
* **Recovery**: after each fault is lifted, the client is ``OPEN`` again within
  ``max(max_delay, Retry-After) + open_timeout + slack``.
* **No leaks**: tasks, open file descriptors and ``tracemalloc``-traced memory, sampled during calm
  periods, do not grow from the first quarter of the run to the last.

Run it from the command line (``make soak DURATION=600`` does the same)::

    python -m wsclient.testing.soak --duration 600 --seed 7
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import sys
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ..client import Client
from ..config import ClientConfig, Heartbeat, Reconnect
from ..errors import ClientClosedError, ConnectionLostError, OutboxFullError
from ..events import (
    ClientEvent,
    Connected,
    ConnectFailed,
    Disconnected,
    GaveUp,
    HeartbeatMissed,
    MessageDropped,
)
from ..routing import Message, SequenceGap
from ..state import ConnectionState
from .feed import FeedServer
from .proxy import ChaosProxy

__all__ = [
    "FAULT_KINDS",
    "UNEXPLAINED_DISCONNECT",
    "ResourceFigures",
    "SoakReport",
    "default_soak_config",
    "main",
    "run_soak",
]

FaultKind = Literal[
    "server_drop", "proxy_drop", "proxy_reset", "blackhole", "latency", "server_restart", "reject"
]

FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "server_drop",
    "proxy_drop",
    "proxy_reset",
    "blackhole",
    "latency",
    "server_restart",
    "reject",
)
"""Every kind of fault the soak injects; each appears once per shuffled round of the schedule."""

UNEXPLAINED_DISCONNECT: Final = "disconnect with neither a close code nor a dead-link verdict"
"""Prefix of the failure recorded for such a disconnect (the cause was an unexpected exception)."""

DEFAULT_STREAMS: Final[tuple[tuple[str, str], ...]] = (
    ("trades", "BTC-USD"),
    ("book", "ETH-USD"),
    ("ticker", "SOL-USD"),
)

_TYPE_TO_CHANNEL: Final[dict[str, str]] = {"trade": "trades", "book": "book", "ticker": "ticker"}

# Send outcomes, one byte per note.
_UNSENT, _ACCEPTED, _RAISED_LOST, _RAISED_FULL, _HUNG = 0, 1, 2, 3, 4
# Arrival bookkeeping, one byte per note.
_ARRIVED = 1
# Drop bookkeeping: why a MessageDropped event named the note.
_DROPPED_IN_FLIGHT, _DROPPED_OTHER = 1, 2


class _FeedData(Message):
    """The FeedServer's stream messages, as the client's typed router sees them."""

    type: Literal["trade", "book", "ticker"]
    symbol: str
    seq: int


def default_soak_config() -> ClientConfig:
    """The client settings of the soak: fast heartbeat and backoff, so a run sees many faults.

    Dead links are noticed within 0.75 s (ping every 0.25 s, pong within 0.5 s), the backoff is capped
    at 1 s, and the outbox is small so that sends during an outage also exercise ``OutboxFullError``.
    """
    return ClientConfig(
        heartbeat=Heartbeat(interval=0.25, timeout=0.5),
        reconnect=Reconnect(initial_delay=0.05, max_delay=1.0, jitter=0.05, reset_after=1.0),
        open_timeout=1.0,
        close_timeout=0.5,
        outbox_size=25,
    )


@dataclass(frozen=True, slots=True)
class ResourceFigures:
    """Medians of one resource in the first and the last quarter of the run, and the allowed growth."""

    name: str
    first: float
    last: float
    tolerance: float
    unit: str = ""

    @property
    def growth(self) -> float:
        """Last-quarter median minus first-quarter median."""
        return self.last - self.first

    @property
    def ok(self) -> bool:
        """Whether the growth stays within the tolerance."""
        return self.growth <= self.tolerance

    def format(self) -> str:
        """One line of the report."""
        return (
            f"{self.name}: first quarter {self.first:g}{self.unit}, last quarter {self.last:g}{self.unit} "
            f"(growth {self.growth:+g}{self.unit}, allowed {self.tolerance:g}{self.unit})"
        )


@dataclass(slots=True)
class SoakReport:
    """What a soak run did and saw. :attr:`failures` is empty when every check passed."""

    duration: float
    seed: int
    faults: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    messages_in: int = 0
    stream_messages: int = 0
    sends: int = 0
    sends_delivered: int = 0
    sends_raised_lost: int = 0
    sends_raised_full: int = 0
    sends_dropped: int = 0
    sends_lost_in_flight: int = 0
    lost_in_flight_by_fault: dict[str, int] = field(default_factory=dict)
    """Sends lost in flight, by the kind of fault that killed their connection."""
    sends_uncertain_delivered: int = 0
    """Sends reported as failed (``ConnectionLostError`` or a drop in flight) that did arrive."""
    gaps_at_reconnect: int = 0
    messages_missed: int = 0
    client_gaps_reported: int = 0
    heartbeat_misses_forgiven: int = 0
    unexplained_disconnects: int = 0
    """Disconnects with neither a close code nor a dead-link verdict: an unexpected exception."""
    peak_connections: int = 0
    recover_times: list[float] = field(default_factory=list)
    recover_bound: float = 0.0
    detect_times: list[float] = field(default_factory=list)
    """Time from a black hole to the client declaring the link dead, per black hole (s)."""
    detect_bound: float = 0.0
    resources: list[ResourceFigures] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    @property
    def max_recover(self) -> float:
        """Longest time from a fault being lifted to the client being ``OPEN`` again (s)."""
        return max(self.recover_times, default=0.0)

    def format(self) -> str:
        """The report as printed by ``python -m wsclient.testing.soak``."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        lost = ", ".join(f"{k} {v}" for k, v in sorted(self.lost_in_flight_by_fault.items())) or "none"
        recover = self.recover_times
        lines = [
            f"soak: {self.duration:.1f}s, seed {self.seed}: {'OK' if self.ok else 'FAILED'}",
            f"faults injected: {sum(self.faults.values())} ({faults})",
            f"connections: {self.connects} ({self.reconnects} reconnects, "
            f"{self.connect_failures} failed attempts); peak live connections at the server: "
            f"{self.peak_connections}",
            f"messages received: {self.messages_in} ({self.stream_messages} stream messages)",
            f"sends: {self.sends}: delivered {self.sends_delivered}, raised {self.sends_raised_lost} "
            f"ConnectionLostError + {self.sends_raised_full} OutboxFullError, dropped (event) "
            f"{self.sends_dropped}, lost in flight at a connection drop {self.sends_lost_in_flight} "
            f"({lost}); reported failed but delivered {self.sends_uncertain_delivered}",
            f"inbound sequence gaps: {self.gaps_at_reconnect}, all at reconnects "
            f"({self.messages_missed} messages missed); client on_gap reported {self.client_gaps_reported}",
            f"heartbeat misses forgiven: {self.heartbeat_misses_forgiven}; unexplained disconnects: "
            f"{self.unexplained_disconnects}",
            f"time to recover: max {self.max_recover:.3f}s, mean "
            f"{statistics.fmean(recover) if recover else 0.0:.3f}s over {len(recover)} faults "
            f"(bound {self.recover_bound:.2f}s)",
            f"black holes declared dead after: max {max(self.detect_times, default=0.0):.3f}s over "
            f"{len(self.detect_times)} (bound {self.detect_bound:.2f}s)",
            *(figure.format() for figure in self.resources),
        ]
        lines += [f"FAILURE: {failure}" for failure in self.failures]
        return "\n".join(lines)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the figure is left out
        return None


class _Soak:
    """One run: the components, the bookkeeping, the schedule and the checks."""

    def __init__(
        self,
        duration: float,
        seed: int,
        *,
        config: ClientConfig,
        rate: float,
        streams: Sequence[tuple[str, str]],
        send_interval: float,
        calm: tuple[float, float],
        slack: float,
        task_tolerance: int,
        fd_tolerance: int,
        memory_tolerance: int,
    ) -> None:
        self.duration = duration
        self.rng = random.Random(seed)
        self.config = config
        self.rate = rate
        self.streams = tuple(streams)
        self.send_interval = send_interval
        self.calm = calm
        self.task_tolerance = task_tolerance
        self.fd_tolerance = fd_tolerance
        self.memory_tolerance = memory_tolerance
        self.key = f"soak-{seed}"
        self.report = SoakReport(duration=duration, seed=seed)
        rc = config.reconnect
        # The server's Retry-After (1 s) can exceed max_delay and wins over it.
        self.retry_after = 1
        self.recover_bound = max(rc.max_delay, self.retry_after) + config.open_timeout + slack
        self.report.recover_bound = self.recover_bound
        hb = config.heartbeat
        self.detect_bound = hb.interval + hb.timeout + slack
        self.report.detect_bound = self.detect_bound

        # Sends: one byte per note for each of its three facts.
        self.sent = bytearray()
        self.arrived = bytearray()
        self.dropped = bytearray()
        # Which fault a note is exposed to: the one running when it was sent, else the next one.
        self.blame = array.array("I")
        self.kinds: list[str] = ["none"]
        self.exposure = 1
        self.last_arrived = -1
        self.boundary = False  # the server saw a new connection since the last arrived note
        self.last_accepted = -1

        # Inbound sequences per stream, from the raw frames.
        self.last_seq: dict[tuple[str, str], int] = {}
        self.resubscribed: set[tuple[str, str]] = set()
        self.client_gaps = 0

        # Events: counts and the recent ones (for the failure messages), never the whole history.
        self.connected = 0
        self.disconnected = 0
        self.event_counts: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=20)
        self.changed = asyncio.Event()

        self.samples: list[tuple[float, int, int | None, int]] = []
        self.sample_every = max(0.5, duration / 200)
        self.next_sample = 0.0

    # ------------------------------------------------------------------ failures and events

    def fail(self, message: str) -> None:
        if len(self.report.failures) < 50:  # a broken invariant tends to repeat; keep the report short
            self.report.failures.append(message)

    def on_event(self, event: ClientEvent) -> None:
        self.event_counts[type(event).__name__] += 1
        self.recent.append(repr(event)[:200])
        if isinstance(event, Connected):
            self.connected += 1
        elif isinstance(event, Disconnected):
            self.disconnected += 1
            if not event.will_retry:
                self.fail(f"connection lost without retry: {event}")
            if event.code is None and not event.reason.startswith("link declared dead"):
                # Every loss in the soak comes with a close code (1006 for a drop) or a heartbeat
                # verdict; anything else is an exception the client did not expect.
                self.report.unexplained_disconnects += 1
                self.fail(f"{UNEXPLAINED_DISCONNECT}: {event}")
        elif isinstance(event, ConnectFailed):
            if not event.will_retry:
                self.fail(f"connect attempt failed without retry: {event}")
        elif isinstance(event, GaveUp):
            self.fail(f"client gave up: {event}")
        elif isinstance(event, HeartbeatMissed):
            if not event.fatal:
                self.report.heartbeat_misses_forgiven += 1
        elif isinstance(event, MessageDropped) and event.direction == "out":
            n = _note_number(event.data)
            if n is None:
                self.fail(f"a send that is not a note was dropped: {event}")
            elif n < len(self.dropped):
                in_flight = event.reason == "connection lost while sending"
                self.dropped[n] = _DROPPED_IN_FLIGHT if in_flight else _DROPPED_OTHER
        self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait, event-driven and bounded, for a condition on the client's events or state."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ inbound

    def on_frame(self, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            self.fail(f"undecodable frame: {frame[:80]!r}")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "ack" and message.get("op") == "subscribe":
            self.resubscribed.add((message["channel"], message["symbol"]))
            return
        channel = _TYPE_TO_CHANNEL.get(kind) if isinstance(kind, str) else None
        if channel is None:
            return
        self.report.stream_messages += 1
        stream = (channel, message["symbol"])
        seq = message["seq"]
        last = self.last_seq.get(stream)
        self.last_seq[stream] = seq
        new_connection = stream in self.resubscribed
        self.resubscribed.discard(stream)
        if last is None or seq == last + 1:
            return
        if seq <= last:
            self.fail(f"{stream}: seq went from {last} to {seq} (duplicate or out of order)")
        elif new_connection:
            self.report.gaps_at_reconnect += 1
            self.report.messages_missed += seq - last - 1
        else:
            self.fail(f"{stream}: seq gap {last} -> {seq} within one connection")

    def on_gap(self, gap: SequenceGap) -> None:
        self.client_gaps += 1
        if gap.kind != "gap" or not gap.across_reconnect:
            self.fail(f"client reported a sequence {gap.kind} not across a reconnect: {gap}")

    # ------------------------------------------------------------------ outbound

    async def sender(self, client: Client, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while not stop.is_set():
            self.sent.append(_UNSENT)
            self.arrived.append(0)
            self.dropped.append(0)
            self.blame.append(self.exposure)
            try:
                async with asyncio.timeout(self.recover_bound):
                    await client.send({"op": "note", "n": n})
            except ConnectionLostError:
                self.sent[n] = _RAISED_LOST
            except OutboxFullError:
                self.sent[n] = _RAISED_FULL
            except ClientClosedError as exc:
                self.sent[n] = _HUNG
                self.fail(f"send() of note {n} found the client closed: {exc}")
                return
            except TimeoutError:
                self.sent[n] = _HUNG
                self.fail(f"send() of note {n} did not return within {self.recover_bound:.1f}s")
            else:
                self.sent[n] = _ACCEPTED
                self.last_accepted = n
            n += 1
            # Pacing, not a wait for a condition: the next note is due one interval later.
            deadline = loop.time() + self.send_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await stop.wait()

    def collect(self, server: FeedServer) -> None:
        """Consume what the server received, so the soak's own records stay small."""
        received = server.received
        frames = list(received)
        received.clear()
        for key, frame in frames:
            if key != self.key or not isinstance(frame, str):
                continue
            if frame.startswith('{"op":"subscribe"'):
                self.boundary = True
                continue
            n = _note_number(frame)
            if n is None:
                continue
            self.note_arrived(n)

    def note_arrived(self, n: int) -> None:
        if n >= len(self.sent):
            self.fail(f"note {n} arrived but was never sent")
            return
        if self.arrived[n]:
            self.fail(f"note {n} arrived twice")
            return
        self.arrived[n] = _ARRIVED
        if n < self.last_arrived:
            self.fail(f"note {n} arrived after note {self.last_arrived}")
            return
        for missing in range(self.last_arrived + 1, n):
            self.judge_missing(missing, at_boundary=self.boundary)
        self.last_arrived = n
        self.boundary = False

    def judge_missing(self, n: int, *, at_boundary: bool) -> None:
        """A note that will not arrive any more (a later one did): was its loss reported?"""
        if self.sent[n] in (_RAISED_LOST, _RAISED_FULL, _HUNG) or self.dropped[n]:
            return
        if at_boundary:
            self.report.sends_lost_in_flight += 1
            index = self.blame[n]
            kind = self.kinds[index] if index < len(self.kinds) else "none"
            by_fault = self.report.lost_in_flight_by_fault
            by_fault[kind] = by_fault.get(kind, 0) + 1
        else:
            self.fail(f"note {n} silently vanished in the middle of a connection")

    def tally_sends(self) -> None:
        report = self.report
        report.sends = len(self.sent)
        for n in range(len(self.sent)):
            sent, arrived, dropped = self.sent[n], self.arrived[n], self.dropped[n]
            if arrived:
                report.sends_delivered += 1
                if sent == _RAISED_FULL or dropped == _DROPPED_OTHER:
                    self.fail(f"note {n} was refused or dropped by the client, yet it arrived")
                elif sent == _RAISED_LOST or dropped:
                    report.sends_uncertain_delivered += 1
            elif sent == _RAISED_LOST:
                report.sends_raised_lost += 1
            elif sent == _RAISED_FULL:
                report.sends_raised_full += 1
            elif dropped:
                report.sends_dropped += 1
            elif n > self.last_arrived and sent == _ACCEPTED:
                self.fail(f"note {n} was accepted after the faults stopped and never arrived")

    # ------------------------------------------------------------------ resources

    def sample(self, t: float) -> None:
        if t < self.next_sample:
            return
        self.next_sample = t + self.sample_every
        # Live memory only: cyclic garbage (exceptions holding their frames) waits for a full
        # collection, whose timing would otherwise make the figures a sawtooth.
        gc.collect()
        memory = _traced_memory() if tracemalloc.is_tracing() else 0
        self.samples.append((t, len(asyncio.all_tasks()), _open_fds(), memory))

    def judge_resources(self, span: float) -> None:
        first = [s for s in self.samples if s[0] <= span / 4]
        last = [s for s in self.samples if s[0] >= span * 3 / 4]
        if not first or not last:
            self.fail(f"too few resource samples ({len(self.samples)}) to compare quarters")
            return
        figures = [
            ResourceFigures(
                "tasks",
                statistics.median(s[1] for s in first),
                statistics.median(s[1] for s in last),
                self.task_tolerance,
            )
        ]
        fds_first = [s[2] for s in first if s[2] is not None]
        fds_last = [s[2] for s in last if s[2] is not None]
        if fds_first and fds_last:
            figures.append(
                ResourceFigures(
                    "open fds", statistics.median(fds_first), statistics.median(fds_last), self.fd_tolerance
                )
            )
        if tracemalloc.is_tracing():
            figures.append(
                ResourceFigures(
                    "traced memory",
                    round(statistics.median(s[3] for s in first) / 1024, 1),
                    round(statistics.median(s[3] for s in last) / 1024, 1),
                    round(self.memory_tolerance / 1024, 1),
                    " KiB",
                )
            )
        self.report.resources = figures
        for figure in figures:
            if not figure.ok:
                self.fail(f"{figure.name} grew: {figure.format()}")

    # ------------------------------------------------------------------ faults

    async def settle(self, server: FeedServer, proxy: ChaosProxy, client: Client, t0: float) -> None:
        """A calm period: the client runs undisturbed; resources are sampled once old links are gone."""
        loop = asyncio.get_running_loop()
        calm = self.rng.uniform(*self.calm)
        end = loop.time() + calm
        # Old connections take a moment to be torn down at the proxy and the server (FIN grace);
        # sampling before that would count them as growth.
        quiet = await _wait_until(
            lambda: proxy.connections == 1 and server.current_connections(self.key) == 1,
            timeout=calm,
        )
        while True:
            self.collect(server)
            now = loop.time()
            if quiet and client.state is ConnectionState.OPEN:
                self.sample(now - t0)
            if now >= end:
                return
            await asyncio.sleep(min(0.05, end - now))  # pacing of the sampler within the calm period

    async def inject(self, kind: FaultKind, server: FeedServer, proxy: ChaosProxy, client: Client) -> None:
        """Inject one fault, lift it, and measure how long the client takes to be OPEN again."""
        loop = asyncio.get_running_loop()
        rng = self.rng
        before = self.connected
        must_reconnect = True
        self.kinds.append(kind)
        self.exposure = len(self.kinds) - 1
        if kind == "server_drop":
            await server.drop_all()
        elif kind == "proxy_drop":
            await proxy.drop_all()
        elif kind == "proxy_reset":
            await proxy.reset()
        elif kind == "server_restart":
            await server.restart()
        elif kind == "blackhole":
            lost = self.disconnected
            proxy.blackhole(True)
            dark = loop.time()
            try:
                detected = await self.wait_for(lambda: self.disconnected > lost, self.detect_bound)
                self.report.detect_times.append(loop.time() - dark)
                if not detected:
                    self.fail(f"a black-holed link was not declared dead within {self.detect_bound:.2f}s")
                # Keep it dark a little longer, so that reconnect attempts run into it too.
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # the fault's duration
            finally:
                proxy.blackhole(False)
        elif kind == "latency":
            must_reconnect = False
            proxy.latency = rng.uniform(0.05, 0.3)
            try:
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # the fault's duration
            finally:
                proxy.latency = 0.0
        elif kind == "reject":
            rejected = server.rejected_handshakes
            server.reject(rng.choice((503, 429)), retry_after=self.retry_after)
            try:
                await (proxy.reset() if rng.random() < 0.5 else server.drop_all())
                seen = await _wait_until(lambda: server.rejected_handshakes > rejected, self.recover_bound)
                if not seen:
                    self.fail("no handshake was attempted while the server rejected them")
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # the fault's duration
            finally:
                server.reject(None)
        lifted = loop.time()
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        if must_reconnect:
            back = await self.wait_for(
                lambda: self.connected > before and client.state is ConnectionState.OPEN, self.recover_bound
            )
        else:
            back = await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound)
        took = loop.time() - lifted
        # From here on, a note is exposed to the next fault: this one's connection has been replaced.
        self.exposure = len(self.kinds)
        self.report.recover_times.append(took)
        if not back:
            self.fail(
                f"not OPEN again {self.recover_bound:.2f}s after a {kind} was lifted "
                f"(state {client.state.value}; recent events: {list(self.recent)[-5:]})"
            )

    # ------------------------------------------------------------------ the run

    async def run(self) -> SoakReport:
        loop = asyncio.get_running_loop()
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            tracemalloc.start()
        try:
            async with (
                FeedServer(rate=self.rate, max_buffer=10_000) as server,
                ChaosProxy("127.0.0.1", server.port) as proxy,
            ):
                await self.drive(server, proxy, loop)
        finally:
            if started_tracing:
                tracemalloc.stop()
        return self.report

    async def drive(self, server: FeedServer, proxy: ChaosProxy, loop: asyncio.AbstractEventLoop) -> None:
        report = self.report
        client = Client(proxy.url(server.path), config=self.config, headers={"X-Client-Id": self.key})
        client.on_event(self.on_event)
        client.on_message(self.on_frame)
        client.on(_FeedData, lambda message: None, seq_key=lambda m: ((m.type, m.symbol), m.seq))
        client.on_gap(self.on_gap)
        for channel, symbol in self.streams:
            client.subscribe({"op": "subscribe", "channel": channel, "symbol": symbol})
        started = loop.time()
        async with client:
            if await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound):
                span = await self.exercise(server, proxy, client, started)
            else:
                self.fail(f"the client did not open at the start (state {client.state.value})")
                span = 0.0
            stats = client.stats
        if client.state is not ConnectionState.CLOSED:
            self.fail(f"client ended {client.state.value}, not closed")
        report.duration = loop.time() - started
        report.connects = stats.connects
        report.reconnects = stats.reconnects
        report.connect_failures = stats.connect_failures
        report.messages_in = stats.messages_in
        report.client_gaps_reported = self.client_gaps
        report.peak_connections = server.peak_connections(self.key)
        self.tally_sends()
        if report.client_gaps_reported != report.gaps_at_reconnect:
            self.fail(
                f"the client's on_gap reported {report.client_gaps_reported} gaps, the raw frames show "
                f"{report.gaps_at_reconnect}"
            )
        if report.peak_connections != 1:
            self.fail(f"the server saw {report.peak_connections} live connections of this client at once")
        self.judge_resources(span)
        if self.event_counts["Connected"] != report.connects:
            self.fail(f"{self.event_counts['Connected']} Connected events for {report.connects} connects")

    async def exercise(self, server: FeedServer, proxy: ChaosProxy, client: Client, started: float) -> float:
        """Faults, then a calm tail; return the span of the fault phase (for the resource quarters)."""
        loop = asyncio.get_running_loop()
        stop_sending = asyncio.Event()
        sender = asyncio.create_task(self.sender(client, stop_sending), name="soak-sender")
        try:
            t0 = loop.time()
            # The tail leaves time for the last fault to be lifted and the final notes to arrive.
            tail = self.recover_bound + 1.0
            chaos_until = t0 + max(0.0, self.duration - (t0 - started) - tail)
            round_: list[FaultKind] = []
            await self.settle(server, proxy, client, t0)
            while loop.time() < chaos_until:
                if not round_:
                    round_ = list(FAULT_KINDS)
                    self.rng.shuffle(round_)
                await self.inject(round_.pop(), server, proxy, client)
                await self.settle(server, proxy, client, t0)
            span = loop.time() - t0
            # The faults have stopped: the client must be open and stay so while notes flow.
            if not await self.wait_for(lambda: client.state is ConnectionState.OPEN, self.recover_bound):
                self.fail(f"not OPEN after the faults stopped (state {client.state.value})")
            end = started + self.duration
            while loop.time() < end:
                self.collect(server)
                await asyncio.sleep(min(0.1, max(0.0, end - loop.time())))  # pacing of the final stretch
            stop_sending.set()
            await sender
        finally:
            stop_sending.set()
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        last = self.last_accepted
        if last >= 0 and not await _wait_until(
            lambda: self._collect_and_check(server, last), self.recover_bound
        ):
            self.fail(f"the last accepted note ({last}) did not arrive")
        self.collect(server)
        return span

    def _collect_and_check(self, server: FeedServer, last: int) -> bool:
        self.collect(server)
        return self.last_arrived >= last


async def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Bounded wait for a condition on the server or proxy, which offer no event to wait on here."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - no event exists for these conditions
                await asyncio.sleep(0.005)
    except TimeoutError:
        return False
    return True


def _traced_memory() -> int:
    """Bytes traced by ``tracemalloc``, except what this module allocated: the soak's own records
    (a few bytes per note, one tuple per sample) grow by design and are not the client's memory."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, __file__)])
    return sum(trace.size for trace in snapshot.traces)


def _note_number(data: str | bytes) -> int | None:
    if not isinstance(data, str) or '"note"' not in data:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    n = message.get("n") if isinstance(message, dict) and message.get("op") == "note" else None
    return n if isinstance(n, int) else None


async def run_soak(
    duration: float,
    seed: int,
    *,
    config: ClientConfig | None = None,
    rate: float = 20.0,
    streams: Sequence[tuple[str, str]] = DEFAULT_STREAMS,
    send_interval: float = 0.02,
    calm: tuple[float, float] = (0.5, 1.5),
    slack: float = 3.0,
    task_tolerance: int = 3,
    fd_tolerance: int = 3,
    memory_tolerance: int = 64 * 1024,
) -> SoakReport:
    """Run a chaos soak for ``duration`` seconds with the fault schedule drawn from ``seed``.

    Args:
        duration: Length of the whole run in seconds; faults stop ``recover bound + 1`` seconds
            before the end so the client can be seen recovering and delivering its last notes.
        seed: Seed of the fault schedule (kinds, durations, latencies, calm periods).
        config: Client settings; :func:`default_soak_config` when omitted. Bounds are derived from
            it: recovery within ``max(max_delay, 1 s Retry-After) + open_timeout + slack``, dead-link
            detection within ``interval + timeout + slack``.
        rate: Messages per second per stream at the FeedServer.
        streams: ``(channel, symbol)`` streams the client subscribes to.
        send_interval: Seconds between two numbered notes sent by the client.
        calm: Range of the calm period between two faults, in seconds.
        slack: Scheduling slack added to every time bound (a loaded machine is slow).
        task_tolerance: Allowed growth of the median task count, first quarter to last.
        fd_tolerance: Allowed growth of the median count of open file descriptors.
        memory_tolerance: Allowed growth of the median traced memory, in bytes.

    Returns:
        The :class:`SoakReport`; the run never raises for a failed check, it lists it in
        ``report.failures``. Faults are started with ``tracemalloc`` tracing unless it already runs.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration!r}")
    soak = _Soak(
        duration,
        seed,
        config=config if config is not None else default_soak_config(),
        rate=rate,
        streams=streams,
        send_interval=send_interval,
        calm=calm,
        slack=slack,
        task_tolerance=task_tolerance,
        fd_tolerance=fd_tolerance,
        memory_tolerance=memory_tolerance,
    )
    return await soak.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run a soak, print its report, exit 1 if a check failed."""
    parser = argparse.ArgumentParser(
        prog="python -m wsclient.testing.soak", description="Chaos soak of wsclient against a fake feed."
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per stream (default 20)")
    args = parser.parse_args(argv)
    report = asyncio.run(run_soak(args.duration, args.seed, rate=args.rate))
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
