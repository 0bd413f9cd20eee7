"""Chaos soak: a :class:`~wsclient.Client` against a :class:`FeedServer` behind a :class:`ChaosProxy`.

:func:`run_soak` connects a client through the proxy, subscribes it to a few streams, makes it send
numbered application messages (``{"op": "note", "n": k}``) at a steady pace, and meanwhile injects
faults one after another on a schedule drawn from a seeded RNG: TCP drops (FIN) at the proxy and at
the server, resets (RST), black holes, latency spikes, server restarts (close 1012), handshake
rejections (503/429 with ``Retry-After``), handshake redirects to another origin (301/302/307 to the
feed's second port), a close frame (1001/1011) with no TCP close after it, a ping flood from a server
that reads nothing (the proxy stops reading from the client too, so the client's pongs back up into
its own buffers), and a stalled uplink (the proxy stops reading from the client while still
forwarding the server's traffic, with the feed flowing or, half of the time, quiet; meanwhile the
client sends 64-256 KiB notes back to back, so that ``send()`` blocks on backpressure).
After each fault it waits for the client to come back and lets it run calmly for a moment before the
next one. At the end it checks what a feed and a bot rely on and returns a :class:`SoakReport`;
:attr:`SoakReport.failures` lists every broken promise:

* **Sends.** Every ``send()`` either reached the server, raised (``ConnectionLostError``,
  ``OutboxFullError``), or was reported in a ``MessageDropped`` event, with one exception no
  WebSocket client can avoid: a frame handed to a socket that dies before the bytes reach the peer.
  Those are counted as *lost in flight* and accepted only when they sit at a connection boundary
  (the server saw the connection end between the last note before them and the first one after);
  a note missing in the middle of one connection is a failure. Notes arrive in order, never twice.
* **Sends reported sent that the server never read: none.** A ``send()`` that returned normally
  although the client emitted ``Disconnected`` while it was in progress (it waited on backpressure
  across the death of its link) must have reached the server; if it did not, its loss was reported
  as a success, which no boundary excuses.
* **Inbound sequence.** Each stream's ``seq`` (global at the server) may jump only where the client
  resubscribed on a new connection (the subscription ack marks the boundary in the raw frames); a
  jump within one connection, or a number going back, is a failure. The client's own gap detection
  (``on_gap``) must agree: every gap it reports straddles a reconnect.
* **One connection at a time**: the server never sees two live connections from this client.
* **Recovery**: after each fault is lifted, the client is ``OPEN`` again within
  ``max(max_delay, Retry-After) + open_timeout + slack``.
* **No stuck OPEN link**: from the moment a fault strikes a live link (every fault but the latency
  spike) to the client's ``Disconnected``, at most ``close_timeout + interval + timeout + slack``: a
  close frame with no TCP close after it, a peer that reads nothing (a ping flood, a stalled uplink)
  and a black hole all end in time. A link the client never gives up is ended by the soak at that
  bound (so the run goes on) and reported. A link closed with a close frame reports its code.
* **Redirects**: the client follows the redirect and is ``OPEN`` through the other origin within the
  recovery bound, and its credential headers (``Authorization``, ``X-Api-Key``) never reach it.
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
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, Protocol, TypeVar, get_args

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
from .feed import FeedServer, Handshake
from .proxy import ChaosProxy

__all__ = [
    "CREDENTIAL_HEADERS",
    "FAULT_KINDS",
    "UNEXPLAINED_DISCONNECT",
    "ResourceFigures",
    "SoakReport",
    "default_soak_config",
    "main",
    "run_soak",
]

FaultKind = Literal[
    "server_drop",
    "proxy_drop",
    "proxy_reset",
    "blackhole",
    "latency",
    "server_restart",
    "reject",
    "redirect",
    "close_no_fin",
    "ping_flood",
    "stall",
]

FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
"""Every kind of fault the soak injects; each appears once per shuffled round of the schedule."""

UNEXPLAINED_DISCONNECT: Final = "disconnect with neither a close code nor a dead-link verdict"
"""Prefix of the failure recorded for such a disconnect (the cause was an unexpected exception)."""

DEFAULT_STREAMS: Final[tuple[tuple[str, str], ...]] = (
    ("trades", "BTC-USD"),
    ("book", "ETH-USD"),
    ("ticker", "SOL-USD"),
)

_TYPE_TO_CHANNEL: Final[dict[str, str]] = {"trade": "trades", "book": "book", "ticker": "ticker"}

CREDENTIAL_HEADERS: Final[tuple[str, ...]] = ("Authorization", "X-Api-Key")
"""Credential headers the soak client sends with every handshake; no other origin may receive them.

``websockets`` drops only ``Authorization`` (and cookies) on a cross-origin redirect, which is why an
API-key header is sent too."""

# Padding of the notes sent (back to back) while the uplink is stalled: send() blocks on backpressure
# within a few dozen notes, whatever the kernel's socket buffers absorb first.
_PAD_BYTES: Final = (64 * 1024, 256 * 1024)
# Bytes of pings per flood (also bounded in time by the stuck bound): more than the client's socket
# buffer and the stalled proxy take, so a client that answers every ping and never gives up the link
# piles its pongs up in its own memory.
_FLOOD_BYTES: Final = 8 * 2**20
# A send() that took this long waited on backpressure (or on a dying link).
_BLOCKED: Final = 0.1

# Send outcomes, one byte per note. _ACCEPTED_ACROSS_LOSS: send() returned normally, but the client
# emitted Disconnected while it was in progress.
_UNSENT, _ACCEPTED, _RAISED_LOST, _RAISED_FULL, _HUNG, _ACCEPTED_ACROSS_LOSS = 0, 1, 2, 3, 4, 5
# Arrival bookkeeping, one byte per note.
_ARRIVED = 1
# Drop bookkeeping: why a MessageDropped event named the note.
_DROPPED_IN_FLIGHT, _DROPPED_OTHER = 1, 2


@dataclass(slots=True)
class _Strike:
    """A fault striking a live link: when, and when the client reported that link lost."""

    kind: str
    at: float
    expect_code: int | None = None
    """The close code the server sent, for a fault that sends one."""
    detail: str = ""
    """How this one was drawn (for a failure message)."""
    ended: float | None = None
    code: int | None = None


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
    sends_reported_sent_never_read: int = 0
    """Sends whose ``send()`` returned normally although the client emitted ``Disconnected`` while
    it was in progress, and that the server never read: a lost note reported as sent."""
    never_read_by_fault: dict[str, int] = field(default_factory=dict)
    """:attr:`sends_reported_sent_never_read`, by the kind of fault that killed their connection."""
    sends_across_disconnect: int = 0
    """Sends whose ``send()`` returned normally across a ``Disconnected``, delivered or not."""
    sends_blocked: int = 0
    """Sends that took at least 0.1 s to return (backpressure, or a dying link)."""
    max_send_time: float = 0.0
    """Longest time one ``send()`` took (s)."""
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
    link_end_times: dict[str, list[float]] = field(default_factory=dict)
    """Per kind of fault, time from the fault striking a live link to the client's ``Disconnected``
    (s); a link the client never gave up counts with the time the soak waited before ending it."""
    stuck_open: int = 0
    """Links that stayed up longer than :attr:`stuck_bound` after a fault struck them."""
    stuck_bound: float = 0.0
    """``close_timeout + interval + timeout + slack`` (s)."""
    redirects_followed: int = 0
    """Redirect faults after which the client reached the redirect target."""
    credentials_leaked: dict[str, int] = field(default_factory=dict)
    """Per credential header, handshakes that carried it to the redirect target (another origin)."""
    ping_flood_bytes: int = 0
    """Bytes of pings the server flooded the client with."""
    stall_pads: list[int] = field(default_factory=list)
    """Size of the padded notes sent during each stall (bytes)."""
    quiet_stalls: int = 0
    """Stalls during which the feed sent nothing either."""
    resource_samples: int = 0
    sampled_span: tuple[float, float] = (0.0, 0.0)
    """Time of the first and the last resource sample, from the start of the fault phase (s)."""
    faults_sampled: dict[str, int] = field(default_factory=dict)
    """Faults injected between the first and the last resource sample, by kind."""
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

    @property
    def max_link_end(self) -> float:
        """Longest time from a fault striking a live link to the client reporting it lost (s)."""
        return max((t for times in self.link_end_times.values() for t in times), default=0.0)

    def format(self) -> str:
        """The report as printed by ``python -m wsclient.testing.soak``."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        lost = ", ".join(f"{k} {v}" for k, v in sorted(self.lost_in_flight_by_fault.items())) or "none"
        never_read = ", ".join(f"{k} {v}" for k, v in sorted(self.never_read_by_fault.items())) or "none"
        recover = self.recover_times
        link_ends = self.link_end_times
        per_fault = ", ".join(f"{k} {max(v):.3f}s" for k, v in sorted(link_ends.items()) if v) or "none"
        leaked = ", ".join(f"{k} {v}" for k, v in sorted(self.credentials_leaked.items())) or "none"
        pads = self.stall_pads
        pad_range = f"{min(pads) // 1024}-{max(pads) // 1024} KiB" if pads else "none"
        first, last = self.sampled_span
        sampled = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_sampled.items())) or "none"
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
            f"sends reported sent that the server never read: {self.sends_reported_sent_never_read} "
            f"({never_read}); send() returned normally across a disconnect "
            f"{self.sends_across_disconnect}; blocked >= {_BLOCKED:g}s {self.sends_blocked} "
            f"(longest {self.max_send_time:.3f}s)",
            f"inbound sequence gaps: {self.gaps_at_reconnect}, all at reconnects "
            f"({self.messages_missed} messages missed); client on_gap reported {self.client_gaps_reported}",
            f"heartbeat misses forgiven: {self.heartbeat_misses_forgiven}; unexplained disconnects: "
            f"{self.unexplained_disconnects}",
            f"time to recover: max {self.max_recover:.3f}s, mean "
            f"{statistics.fmean(recover) if recover else 0.0:.3f}s over {len(recover)} faults "
            f"(bound {self.recover_bound:.2f}s)",
            f"black holes declared dead after: max {max(self.detect_times, default=0.0):.3f}s over "
            f"{len(self.detect_times)} (bound {self.detect_bound:.2f}s)",
            f"links lost after a fault struck: max {self.max_link_end:.3f}s over "
            f"{sum(len(v) for v in link_ends.values())} (bound {self.stuck_bound:.2f}s); stuck OPEN "
            f"{self.stuck_open}; max by fault: {per_fault}",
            f"redirects: {self.redirects_followed} of {self.faults.get('redirect', 0)} followed to the "
            f"other origin; credential headers it received: {leaked}",
            f"ping floods: {self.faults.get('ping_flood', 0)} ({self.ping_flood_bytes / 2**20:.1f} MiB "
            f"of pings); stalled uplinks: {self.faults.get('stall', 0)}, {self.quiet_stalls} with the "
            f"feed quiet (notes padded to {pad_range})",
            f"resources sampled {self.resource_samples} times, {first:.1f}s to {last:.1f}s into the "
            f"faults, around {sum(self.faults_sampled.values())} faults ({sampled})",
            *(figure.format() for figure in self.resources),
        ]
        lines += [f"FAILURE: {failure}" for failure in self.failures]
        return "\n".join(lines)


Sample = tuple[float, int, int | None, int]
"""A resource sample: (time into the run, live tasks, open file descriptors, traced bytes)."""


def resource_sample() -> tuple[int, int | None, int]:
    """Live tasks, open file descriptors and ``tracemalloc``-traced bytes (0 when not tracing), now."""
    # Live memory only: cyclic garbage (exceptions holding their frames) waits for a full
    # collection, whose timing would otherwise make the figures a sawtooth.
    gc.collect()
    memory = _traced_memory() if tracemalloc.is_tracing() else 0
    return len(asyncio.all_tasks()), _open_fds(), memory


def compare_quarters(
    samples: Sequence[Sample], span: float, tasks: float, fds: float, memory: float
) -> list[ResourceFigures] | None:
    """The medians of the first quarter of a run against the last, with their tolerances; ``None``
    when a quarter has no sample."""
    first = [s for s in samples if s[0] <= span / 4]
    last = [s for s in samples if s[0] >= span * 3 / 4]
    if not first or not last:
        return None
    figures = [
        ResourceFigures(
            "tasks", statistics.median(s[1] for s in first), statistics.median(s[1] for s in last), tasks
        )
    ]
    fds_first = [s[2] for s in first if s[2] is not None]
    fds_last = [s[2] for s in last if s[2] is not None]
    if fds_first and fds_last:
        figures.append(
            ResourceFigures("open fds", statistics.median(fds_first), statistics.median(fds_last), fds)
        )
    if tracemalloc.is_tracing():
        figures.append(
            ResourceFigures(
                "traced memory",
                round(statistics.median(s[3] for s in first) / 1024, 1),
                round(statistics.median(s[3] for s in last) / 1024, 1),
                round(memory / 1024, 1),
                " KiB",
            )
        )
    return figures


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the figure is left out
        return None


class _Checked(Protocol):
    """What a soak's report holds of the checks :class:`SoakChecks` makes."""

    failures: list[str]
    resources: list[ResourceFigures]
    resource_samples: int


R = TypeVar("R", bound=_Checked)


class SoakChecks(Generic[R]):
    """What every soak run does beside its faults: failures listed (a few), event-driven waits, and
    resources sampled through the run and compared first quarter to last."""

    def __init__(
        self, report: R, duration: float, task_tolerance: int, fd_tolerance: int, memory_tolerance: int
    ) -> None:
        self.report = report
        self.task_tolerance = task_tolerance
        self.fd_tolerance = fd_tolerance
        self.memory_tolerance = memory_tolerance
        self.changed = asyncio.Event()
        """Set by each client event: what :meth:`wait_for` wakes on."""
        self.samples: list[tuple[float, int, int | None, int]] = []
        self.sample_every = max(0.5, duration / 200)
        self.next_sample = 0.0

    def fail(self, message: str) -> None:
        if len(self.report.failures) < 50:  # a broken invariant tends to repeat; keep the report short
            self.report.failures.append(message)

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

    def sample(self, t: float) -> None:
        if t < self.next_sample:
            return
        self.next_sample = t + self.sample_every
        self.samples.append((t, *resource_sample()))

    def judge_resources(self, span: float) -> None:
        self.report.resource_samples = len(self.samples)
        figures = compare_quarters(
            self.samples, span, self.task_tolerance, self.fd_tolerance, self.memory_tolerance
        )
        if figures is None:
            self.fail(f"too few resource samples ({len(self.samples)}) to compare quarters")
            return
        self.report.resources = figures
        for figure in figures:
            if not figure.ok:
                self.fail(f"{figure.name} grew: {figure.format()}")


class _Soak(SoakChecks[SoakReport]):
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
        faults: Sequence[FaultKind] = FAULT_KINDS,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULT_KINDS))
        if unknown or not faults:
            raise ValueError(f"faults must be a non-empty selection of {FAULT_KINDS}, got {faults!r}")
        self.duration = duration
        self.rng = random.Random(seed)
        self.config = config
        self.rate = rate
        self.streams = tuple(streams)
        self.send_interval = send_interval
        self.calm = calm
        super().__init__(
            SoakReport(duration=duration, seed=seed), duration, task_tolerance, fd_tolerance, memory_tolerance
        )
        self.faults: tuple[FaultKind, ...] = tuple(dict.fromkeys(faults))
        self.key = f"soak-{seed}"
        self.secret = f"soak-secret-{seed}"
        # Timing of strikes and sends; a test feeding the checks by hand replaces it.
        self.clock: Callable[[], float] = time.monotonic
        rc = config.reconnect
        # The server's Retry-After (1 s) can exceed max_delay and wins over it.
        self.retry_after = 1
        self.recover_bound = max(rc.max_delay, self.retry_after) + config.open_timeout + slack
        self.report.recover_bound = self.recover_bound
        hb = config.heartbeat
        self.detect_bound = hb.interval + hb.timeout + slack
        self.report.detect_bound = self.detect_bound
        # A link struck by a fault ends by the close timeout (a close frame with no TCP close after
        # it) or by the heartbeat's verdict (a peer that is gone or reads nothing), not later.
        self.stuck_bound = config.close_timeout + hb.interval + hb.timeout + slack
        self.report.stuck_bound = self.stuck_bound
        # A send may block as long as the link it waits on lives, and that is bounded above.
        self.send_bound = max(self.recover_bound, self.stuck_bound + 1.0)
        self.strike: _Strike | None = None
        self.pad = ""  # while the uplink is stalled: padding of every note
        self.t0 = 0.0
        self.fault_times: list[tuple[float, str]] = []

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

    # ------------------------------------------------------------------ events

    def on_event(self, event: ClientEvent) -> None:
        self.event_counts[type(event).__name__] += 1
        self.recent.append(repr(event)[:200])
        if isinstance(event, Connected):
            self.connected += 1
        elif isinstance(event, Disconnected):
            self.disconnected += 1
            strike = self.strike
            if strike is not None and strike.ended is None:
                strike.ended = self.clock()
                strike.code = event.code
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
            note: dict[str, object] = {"op": "note", "n": n}
            if self.pad:
                note["pad"] = self.pad
            lost = self.disconnected
            started = self.clock()
            try:
                async with asyncio.timeout(self.send_bound):
                    await client.send(note)
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
                self.fail(f"send() of note {n} did not return within {self.send_bound:.1f}s")
            else:
                # Disconnected while the send was in progress: the send waited on a link that died
                # meanwhile, yet reported success. Whether that was true is known once later notes
                # arrive (or the run ends).
                across = self.disconnected != lost
                self.sent[n] = _ACCEPTED_ACROSS_LOSS if across else _ACCEPTED
                if across:
                    self.report.sends_across_disconnect += 1
                self.last_accepted = n
            took = self.clock() - started
            self.report.max_send_time = max(self.report.max_send_time, took)
            if took >= _BLOCKED:
                self.report.sends_blocked += 1
            n += 1
            # Pacing, not a wait for a condition: the next note is due one interval later. While the
            # uplink is stalled, padded notes go back to back, a bulk upload: the socket buffers on
            # the way (megabytes on loopback) fill at once, and send() blocks on backpressure.
            deadline = loop.time() + (0.0 if self.pad else self.send_interval)
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
        if self.sent[n] == _ACCEPTED_ACROSS_LOSS:
            self.never_read(n)
        elif at_boundary:
            self.report.sends_lost_in_flight += 1
            kind = self.blamed(n)
            by_fault = self.report.lost_in_flight_by_fault
            by_fault[kind] = by_fault.get(kind, 0) + 1
        else:
            self.fail(f"note {n} silently vanished in the middle of a connection")

    def blamed(self, n: int) -> str:
        index = self.blame[n]
        return self.kinds[index] if index < len(self.kinds) else "none"

    def never_read(self, n: int) -> None:
        """Note ``n``'s send() returned normally across the death of its link; it never arrived."""
        kind = self.blamed(n)
        self.report.sends_reported_sent_never_read += 1
        by_fault = self.report.never_read_by_fault
        by_fault[kind] = by_fault.get(kind, 0) + 1
        self.fail(
            f"note {n}: send() returned normally although the link died while it was in progress "
            f"(a Disconnected during the send, exposed to {kind}), and the server never read it"
        )

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
            elif n > self.last_arrived and sent == _ACCEPTED_ACROSS_LOSS:
                self.never_read(n)
            elif n > self.last_arrived and sent == _ACCEPTED:
                self.fail(f"note {n} was accepted after the faults stopped and never arrived")

    # ------------------------------------------------------------------ resources

    def judge_resources(self, span: float) -> None:
        if self.samples:
            since, until = self.samples[0][0], self.samples[-1][0]
            self.report.sampled_span = (since, until)
            self.report.faults_sampled = dict(Counter(k for t, k in self.fault_times if since <= t <= until))
        super().judge_resources(span)

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
        self.fault_times.append((loop.time() - self.t0, kind))
        if kind != "latency" and client.state is ConnectionState.OPEN:
            self.strike_link(kind)
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
        elif kind == "redirect":
            before = await self.redirect(server, proxy, client)
        elif kind == "close_no_fin":
            code = rng.choice((1001, 1011))
            if self.strike is not None:
                self.strike.expect_code = code
            server.close_and_hang(code, "soak: close frame, then silence", key=self.key)
            # Once the client has let go, the server reads again (discarding) to see its FIN.
            await self.until_link_lost(server.drop_all, lambda: server.resume_reading(self.key, discard=True))
        elif kind == "ping_flood":
            server.flood_pings(self.key, max_bytes=_FLOOD_BYTES, duration=self.stuck_bound)
            # On loopback a server that reads nothing absorbs tens of MiB in its kernel (tcp_rmem)
            # before the client's writes back up: more pongs than a client can answer within any
            # bound. The proxy's stalled uplink caps that at the few MiB a real path buffers.
            proxy.stall(True)

            def lift_flood() -> None:
                proxy.stall(False)
                server.resume_reading(self.key, discard=True)

            await self.until_link_lost(server.drop_all, lift_flood)
        elif kind == "stall":
            pad = rng.randint(*_PAD_BYTES)
            # Half of the stalls with the feed quiet: nothing arrives, so only the heartbeat can
            # tell, while send() is blocked; the other half, frames keep arriving meanwhile.
            quiet = rng.random() < 0.5
            self.report.stall_pads.append(pad)
            if quiet:
                self.report.quiet_stalls += 1
            if self.strike is not None:
                self.strike.detail = f"feed {'quiet' if quiet else 'flowing'}, notes of {pad // 1024} KiB"
            self.pad = "x" * pad
            server.silent = quiet
            proxy.stall(True)

            def lift_stall() -> None:
                proxy.stall(False)
                server.silent = False

            try:
                await self.until_link_lost(proxy.reset, lift_stall)
            finally:
                self.pad = ""
        await self.link_lost()
        self.end_strike()
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

    async def redirect(self, server: FeedServer, proxy: ChaosProxy, client: Client) -> int:
        """Redirect the handshakes to the feed's second port, make the client reconnect, check what
        reached the other origin, then bring it back through the proxy; return the count of
        ``Connected`` events the final recovery must exceed."""
        rng = self.rng
        status = rng.choice((307, 301, 302))
        kill_at_proxy = rng.random() < 0.5
        stay = rng.uniform(0.0, 1.0)  # the fault's duration, once connected through the redirect
        target = server.alt_port
        assert target is not None, "the soak's FeedServer has a second listener"
        server.handshakes.clear()
        server.redirect(status)
        before = self.connected
        try:
            await (proxy.reset() if kill_at_proxy else server.drop_all())
            followed = await self.wait_for(
                lambda: self.connected > before and client.state is ConnectionState.OPEN, self.recover_bound
            )
            self.judge_redirect(server.handshakes, target)
            if followed:
                await asyncio.sleep(stay)
            else:
                self.fail(
                    f"not OPEN through a {status} redirect to another origin within "
                    f"{self.recover_bound:.2f}s (state {client.state.value}; recent events: "
                    f"{list(self.recent)[-5:]})"
                )
        finally:
            server.redirect(None)
        await self.link_lost()
        self.end_strike()
        # The client's next handshake is not redirected: end the link to the other origin so that
        # the client comes back through the proxy, where the other faults strike.
        before = self.connected
        await server.drop_all()
        return before

    def judge_redirect(self, handshakes: Iterable[Handshake], target: int) -> None:
        """Whether the client reached the redirect target, and carried no credential there."""
        reached = [h for h in handshakes if h.port == target]
        if reached:
            self.report.redirects_followed += 1
        leaked = self.report.credentials_leaked
        for handshake in reached:
            for name in CREDENTIAL_HEADERS:
                if handshake.header(name) is not None:
                    leaked[name] = leaked.get(name, 0) + 1
                    self.fail(
                        f"credential header {name} reached the redirect target, another origin "
                        f"(port {handshake.port}, HTTP {handshake.status})"
                    )

    # ------------------------------------------------------------------ stuck links

    def strike_link(self, kind: str, expect_code: int | None = None) -> None:
        """A fault strikes the live link now: time it until the client reports the link lost.

        ``expect_code``: the close code the server sends, which the ``Disconnected`` must carry.
        """
        self.strike = _Strike(kind, self.clock(), expect_code)

    async def link_lost(self) -> bool:
        """Wait, bounded by the stuck bound from the strike, until the struck link is reported lost."""
        strike = self.strike
        if strike is None:
            return True
        remaining = strike.at + self.stuck_bound - self.clock()
        return await self.wait_for(lambda: strike.ended is not None, max(0.0, remaining))

    def end_strike(self) -> None:
        """Record how long the struck link outlived the fault; a link still up is stuck OPEN."""
        strike, self.strike = self.strike, None
        if strike is None:
            return
        took = (strike.ended if strike.ended is not None else self.clock()) - strike.at
        self.report.link_end_times.setdefault(strike.kind, []).append(took)
        if strike.ended is None or took > self.stuck_bound:
            self.report.stuck_open += 1
            detail = f" ({strike.detail})" if strike.detail else ""
            self.fail(
                f"stuck OPEN: the link was {'still up' if strike.ended is None else 'lost only'} "
                f"{took:.2f}s after a {strike.kind}{detail} struck it (bound {self.stuck_bound:.2f}s: "
                f"close_timeout + interval + timeout + slack); recent events: {list(self.recent)[-3:]}"
            )
        elif strike.expect_code is not None and strike.code != strike.expect_code:
            self.fail(
                f"a link closed by the server with {strike.expect_code} (no TCP close after it) was "
                f"reported lost with code {strike.code}"
            )

    async def until_link_lost(
        self, end_link: Callable[[], Awaitable[None]], lift: Callable[[], object]
    ) -> None:
        """The fault stays until the client gives the link up (or the stuck bound passes: then
        ``end_link`` ends it, so the run goes on), and is lifted right after."""
        try:
            lost = await self.link_lost()
            self.end_strike()
            if not lost:
                await end_link()
        finally:
            lift()

    # ------------------------------------------------------------------ the run

    async def run(self) -> SoakReport:
        loop = asyncio.get_running_loop()
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            tracemalloc.start()
        try:
            async with (
                # The second listener is the redirect target: the same feed on another origin.
                FeedServer(rate=self.rate, max_buffer=10_000, alt_port=0) as server,
                ChaosProxy("127.0.0.1", server.port) as proxy,
            ):
                await self.drive(server, proxy, loop)
        finally:
            if started_tracing:
                tracemalloc.stop()
        return self.report

    async def drive(self, server: FeedServer, proxy: ChaosProxy, loop: asyncio.AbstractEventLoop) -> None:
        report = self.report
        headers = {
            "X-Client-Id": self.key,
            "Authorization": f"Bearer {self.secret}",
            "X-Api-Key": self.secret,
        }
        client = Client(proxy.url(server.path), config=self.config, headers=headers)
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
        report.ping_flood_bytes = server.ping_flood_bytes
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
            t0 = self.t0 = loop.time()
            # The tail leaves time for the last fault to be lifted and the final notes to arrive.
            tail = self.recover_bound + 1.0
            chaos_until = t0 + max(0.0, self.duration - (t0 - started) - tail)
            round_: list[FaultKind] = []
            await self.settle(server, proxy, client, t0)
            while loop.time() < chaos_until:
                if not round_:
                    round_ = list(self.faults)
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
    faults: Sequence[FaultKind] = FAULT_KINDS,
) -> SoakReport:
    """Run a chaos soak for ``duration`` seconds with the fault schedule drawn from ``seed``.

    Args:
        duration: Length of the whole run in seconds; faults stop ``recover bound + 1`` seconds
            before the end so the client can be seen recovering and delivering its last notes.
        seed: Seed of the fault schedule (kinds, durations, latencies, calm periods).
        config: Client settings; :func:`default_soak_config` when omitted. Bounds are derived from
            it: recovery within ``max(max_delay, 1 s Retry-After) + open_timeout + slack``, dead-link
            detection within ``interval + timeout + slack``, a struck link lost within
            ``close_timeout + interval + timeout + slack``.
        rate: Messages per second per stream at the FeedServer.
        streams: ``(channel, symbol)`` streams the client subscribes to.
        send_interval: Seconds between two numbered notes sent by the client.
        calm: Range of the calm period between two faults, in seconds.
        slack: Scheduling slack added to every time bound (a loaded machine is slow).
        task_tolerance: Allowed growth of the median task count, first quarter to last.
        fd_tolerance: Allowed growth of the median count of open file descriptors.
        memory_tolerance: Allowed growth of the median traced memory, in bytes.
        faults: The kinds of fault to inject (all of :data:`FAULT_KINDS` by default); a single
            kind runs that fault in isolation, round after round.

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
        faults=faults,
    )
    return await soak.run()


def soak_parser(
    prog: str, description: str, kinds: Sequence[str], *, rate: float, rate_unit: str
) -> argparse.ArgumentParser:
    """The options every soak's command line has: ``--duration``, ``--seed``, ``--rate`` and
    ``--faults`` (a comma-separated subset of ``kinds``, returned in ``kinds``' order)."""

    def fault_kinds(text: str) -> tuple[str, ...]:
        chosen = tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = [k for k in chosen if k not in kinds]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown fault kind(s) {unknown}; choose from {', '.join(kinds)}"
            )
        return tuple(k for k in kinds if k in chosen)

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    parser.add_argument("--rate", type=float, default=rate, help=f"{rate_unit} per stream (default {rate:g})")
    parser.add_argument(
        "--faults",
        type=fault_kinds,
        default=tuple(kinds),
        help=f"comma-separated kinds of fault to inject (default: all of {','.join(kinds)})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run a soak, print its report, exit 1 if a check failed."""
    parser = soak_parser(
        "python -m wsclient.testing.soak",
        "Chaos soak of wsclient against a fake feed.",
        FAULT_KINDS,
        rate=20.0,
        rate_unit="messages/s",
    )
    parser.add_argument(
        "--transport",
        choices=("websockets", "picows"),
        default="websockets",
        help="the client's transport backend (default websockets)",
    )
    args = parser.parse_args(argv)
    config = default_soak_config().model_copy(update={"transport": args.transport})
    report = asyncio.run(
        run_soak(args.duration, args.seed, rate=args.rate, faults=args.faults, config=config)
    )
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
