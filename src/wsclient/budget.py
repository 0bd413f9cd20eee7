"""Rate budgets: what a venue lets a client send, and how often it may connect. Pure, clock injected.

Venues state their limits as "at most N per window" (Binance: 5 client messages per second per
connection, 300 connection attempts per 5 minutes per IP; OKX: 3 connects per second, 480 subscribes
per hour) and enforce them by counting what arrived in the last window. :class:`SlidingWindow` keeps
the times of the last N events and answers exactly that question, so a client that asks it before
every send can never exceed the venue's count, bursts included.

A token bucket was the first candidate and is not what is used: a bucket of capacity C refilled at
rate R admits C + R·W events in a window W, so it either exceeds N (C = N, R = N/W: 2N at a window's
edge) or wastes most of the budget (C + R·W ≤ N). The sliding log costs N floats (5 for Binance's
message budget) and is exact.

:class:`ConnectGate` puts a window in front of connection attempts and is shared by every
connection of a pool (and by anything else given the same gate): callers wait their turn in order,
so a herd of reconnects after an outage is spread over the quota instead of tripping it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["ConnectGate", "LinkBudgets", "SlidingWindow"]


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds.

    ``margin`` widens the window by that fraction (0.1: 10 %), for the jitter between when a
    client sends and when the venue counts. The caller asks :meth:`delay`, waits that long, then
    :meth:`record`\\ s the event; nothing here sleeps or reads a clock of its own.

    ``reserve`` keeps slots free for events that must never wait (the heartbeat's pings): ordinary
    events see a limit of ``limit - reserve``; reserved ones are recorded without asking.
    """

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int, window: float, *, margin: float = 0.0) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.limit = limit
        self.window = window * (1.0 + margin)
        # Only the last `limit` times can matter: bounded whatever the traffic.
        self._times: deque[float] = deque(maxlen=limit)

    def _prune(self, now: float) -> None:
        times = self._times
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()

    def used(self, now: float) -> int:
        """Events counted in the window ending at ``now``."""
        self._prune(now)
        return len(self._times)

    def delay(self, now: float, reserve: int = 0) -> float:
        """Seconds from ``now`` until one more event fits, ``reserve`` slots kept free; 0: now."""
        self._prune(now)
        allowed = max(1, self.limit - reserve)
        times = self._times
        over = len(times) - allowed
        if over < 0:
            return 0.0
        # The event that must leave the window first for one more to fit.
        return times[over] + self.window - now

    def record(self, now: float) -> None:
        """Count one event at ``now`` (times must not go backwards)."""
        self._times.append(now)

    def __repr__(self) -> str:
        return f"<SlidingWindow {len(self._times)}/{self.limit} per {self.window:g}s>"


class ConnectGate:
    """A shared limit on connection attempts: at most ``limit`` per ``window`` seconds.

    Give the same gate to several clients or pools to make them share one quota (a venue counts
    attempts per IP address). Every connect and reconnect passes :meth:`acquire` after its backoff:
    the gate can only add to a wait, never shorten a backoff or a server's ``Retry-After``.
    Waiters go through in the order they arrived.
    """

    __slots__ = ("_clock", "_lock", "_window", "attempts", "waited", "waits")

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        margin: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._window = SlidingWindow(limit, window, margin=margin)
        self._clock = clock
        self._lock: asyncio.Lock | None = None
        self.attempts = 0
        """Attempts let through."""
        self.waits = 0
        """Attempts that had to wait for the quota."""
        self.waited = 0.0
        """Seconds spent waiting for the quota, over all attempts."""

    @property
    def limit(self) -> int:
        """Attempts allowed per window."""
        return self._window.limit

    @property
    def window(self) -> float:
        """The window in seconds (margin included)."""
        return self._window.window

    def _now(self) -> float:
        clock = self._clock
        return clock() if clock is not None else asyncio.get_running_loop().time()

    async def acquire(self) -> float:
        """Wait for a slot and take it; the seconds waited."""
        lock = self._lock
        if lock is None:
            lock = self._lock = asyncio.Lock()
        start = self._now()
        async with lock:  # FIFO: a herd goes through in arrival order
            # Bounded: each pass waits until the oldest counted attempt leaves the window.
            for _ in range(self._window.limit + 2):
                delay = self._window.delay(self._now())
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            now = self._now()
            self._window.record(now)
        waited = now - start
        self.attempts += 1
        if waited:
            self.waits += 1
            self.waited += waited
        return waited

    def __repr__(self) -> str:
        return f"<ConnectGate {self._window.limit} per {self._window.window:g}s, {self.attempts} attempts>"


class LinkBudgets:
    """One connection's budgets under a venue's limits (made only when limits are configured)."""

    __slots__ = ("count_pings", "messages", "reserve", "subscribes")

    def __init__(
        self,
        messages: SlidingWindow | None,
        subscribes: SlidingWindow | None,
        *,
        reserve: int = 0,
        count_pings: bool = False,
    ) -> None:
        self.messages = messages
        """Client messages (``VenueLimits.messages_per_second``)."""
        self.subscribes = subscribes
        """Subscription messages (``VenueLimits.subscribes_per_hour``)."""
        self.reserve = reserve
        """Slots of :attr:`messages` data leaves to the heartbeat."""
        self.count_pings = count_pings
        """Whether the heartbeat's pings are counted in :attr:`messages`."""
