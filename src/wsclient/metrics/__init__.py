"""Metrics: the timings a client records when asked to, and the histograms that keep them.

A client records nothing by itself beyond its counters (``client.stats``). Timings need a clock
reading per frame, so they are taken only while a :class:`MetricsRecorder` is attached
(``client.add_metrics(recorder)``, ``pool.add_metrics(recorder_for)``): without one, the receive loop
runs exactly as it does without this module (the client switches to timed objects when the first
recorder arrives, and back when the last one leaves: no flag is tested per frame).

Three timings, in seconds:

* **handler time**: delivering one frame, from the start of its dispatch to the end of its last
  handler (decoding and validation, ``on_message`` callbacks, typed handlers, awaited ones included);
* **inbound queue wait**: how long a frame waited in the client's inbound queue before its dispatch
  began (0 for a frame delivered as soon as it was read, the common case with sync handlers);
* **round-trip time** of every answered heartbeat ping.

The exporters build on this: :mod:`wsclient.metrics.prometheus` (a ``prometheus_client`` collector,
``pip install 'wsclient[prometheus]'``) and :mod:`wsclient.metrics.otel` (OpenTelemetry instruments,
``pip install 'wsclient[otel]'``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

from ..errors import ConfigError

__all__ = [
    "HANDLER_BUCKETS",
    "RTT_BUCKETS",
    "Histogram",
    "HistogramSnapshot",
    "Histograms",
    "MetricsRecorder",
]

#: Upper bounds (seconds) for handler times and queue waits: a validated message takes tens of
#: microseconds, a slow async handler hundreds of milliseconds.
HANDLER_BUCKETS: tuple[float, ...] = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

#: Upper bounds (seconds) for heartbeat round-trip times: sub-millisecond on a LAN, a second or more
#: on a congested link.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@runtime_checkable
class MetricsRecorder(Protocol):
    """What a client calls with its timings while the recorder is attached.

    The methods run on the event loop, on the receive path for the first two: keep them to a few
    arithmetic operations (the histograms here, an OpenTelemetry ``Histogram.record``).
    """

    def handler_time(self, seconds: float) -> None:
        """One frame was delivered; its handlers took ``seconds``."""

    def queue_wait(self, seconds: float) -> None:
        """One frame waited ``seconds`` in the inbound queue before its dispatch began."""

    def rtt(self, seconds: float) -> None:
        """A heartbeat ping was answered after ``seconds``."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's figures at one moment, in Prometheus' shape."""

    buckets: tuple[tuple[float, int], ...]
    """``(upper bound, observations <= bound)``, cumulative, ending with ``(inf, count)``."""
    count: int
    sum: float


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(b) for b in bounds)
    if not values:
        raise ConfigError("a histogram needs at least one bucket bound (seconds), e.g. HANDLER_BUCKETS")
    if any(b <= 0 or b != b or b == float("inf") for b in values):
        raise ConfigError(f"bucket bounds must be finite seconds > 0, got {values}")
    if any(a >= b for a, b in pairwise(values)):
        raise ConfigError(f"bucket bounds must be strictly increasing, got {values}")
    return values


class Histogram:
    """Observations counted into fixed buckets (``value <= bound``), with their sum.

    One bisection, one list increment and one addition per observation; the count and the
    cumulative view are built only when read (:meth:`snapshot`).
    """

    __slots__ = ("_counts", "bounds", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = _check_bounds(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative buckets, count and sum now."""
        total = self.sum  # read first: a scrape from another thread sees at most a newer count
        running = 0
        buckets = []
        for bound, n in zip((*self.bounds, float("inf")), list(self._counts), strict=True):
            running += n
            buckets.append((bound, running))
        return HistogramSnapshot(tuple(buckets), running, total)

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.sum:.6f}>"


class Histograms:
    """A :class:`MetricsRecorder` keeping one :class:`Histogram` per timing (what the Prometheus
    collector exports)."""

    __slots__ = ("handler", "handler_time", "queue", "queue_wait", "round_trip", "rtt")

    def __init__(
        self,
        handler_buckets: Sequence[float] = HANDLER_BUCKETS,
        rtt_buckets: Sequence[float] = RTT_BUCKETS,
    ) -> None:
        self.handler = Histogram(handler_buckets)
        """Handler time per frame."""
        self.queue = Histogram(handler_buckets)
        """Inbound queue wait per frame."""
        self.round_trip = Histogram(rtt_buckets)
        """Heartbeat round-trip times."""
        # The recorder's methods are the histograms' own observe(): no call in between, per frame.
        self.handler_time: Callable[[float], None] = self.handler.observe
        self.queue_wait: Callable[[float], None] = self.queue.observe
        self.rtt: Callable[[float], None] = self.round_trip.observe


class Fanout:
    """Several recorders attached to one client, called in turn."""

    __slots__ = ("recorders",)

    def __init__(self, recorders: Sequence[MetricsRecorder]) -> None:
        self.recorders = tuple(recorders)

    def handler_time(self, seconds: float) -> None:
        for recorder in self.recorders:
            recorder.handler_time(seconds)

    def queue_wait(self, seconds: float) -> None:
        for recorder in self.recorders:
            recorder.queue_wait(seconds)

    def rtt(self, seconds: float) -> None:
        for recorder in self.recorders:
            recorder.rtt(seconds)


def check_recorder(recorder: object) -> MetricsRecorder:
    """``recorder`` if it has the three methods, else a :class:`~wsclient.ConfigError` naming what is
    missing."""
    lacking = [
        name for name in ("handler_time", "queue_wait", "rtt") if not callable(getattr(recorder, name, None))
    ]
    if lacking:
        raise ConfigError(
            f"a metrics recorder needs methods handler_time(s), queue_wait(s) and rtt(s); "
            f"{type(recorder).__name__} lacks {', '.join(lacking)} (use wsclient.metrics.Histograms)"
        )
    return recorder  # type: ignore[return-value]
