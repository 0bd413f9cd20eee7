"""OpenTelemetry metrics for clients, pools and sinks (``pip install 'wsclient[otel]'``).

Written against ``opentelemetry-api`` only: the SDK, its readers and exporters are the application's
choice (without an SDK configured, every instrument is a no-op). :class:`OtelMetrics` creates:

* observable instruments whose callbacks read the live figures at each collection (``client.stats``,
  ``pool.stats`` and ``pool.shards``, a sink's ``stats``): counters as observable counters, queue
  depths as observable up-down counters, round-trip times and ages as observable gauges;
* three histograms recorded as events happen, through the client's metrics hooks:
  ``wsclient.handler.duration``, ``wsclient.inbound_queue.wait`` and ``wsclient.heartbeat.rtt``
  (seconds, with bucket boundaries advised for their ranges).

::

    from wsclient.metrics.otel import OtelMetrics

    metrics = OtelMetrics(meter_provider=provider)     # or the global provider
    metrics.add(client, name="binance")                 # attributes wsclient.client="binance"
    metrics.add(pool, name="okx")                       # ... and wsclient.shard=0, 1, ...
    metrics.add(sink, name="nats")                      # wsclient.sink="nats"

The counter names follow the Prometheus collector's (:mod:`wsclient.metrics.prometheus`) with dots:
``wsclient.messages_received`` is ``wsclient_messages_received_total`` once exported to Prometheus.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - the extra is documented where this is imported
    raise ImportError("wsclient.metrics.otel needs opentelemetry-api: pip install 'wsclient[otel]'") from exc

from ..client import Client
from ..errors import ConfigError
from ..events import ClientStats
from ..pool import Pool
from ..sinks.base import SinkStats
from ..state import ConnectionState
from . import HANDLER_BUCKETS, RTT_BUCKETS, MetricsRecorder

__all__ = ["OtelMetrics", "instrument"]

_Attributes = dict[str, str | int]

#: (instrument name, unit, description, ``ClientStats`` field): observable counters per client/shard.
_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("wsclient.connects", "{connection}", "Successful connections, the first included.", "connects"),
    ("wsclient.reconnects", "{connection}", "Connections replacing a lost one.", "reconnects"),
    ("wsclient.connect_failures", "{attempt}", "Connect attempts that failed.", "connect_failures"),
    ("wsclient.messages_received", "{message}", "Data messages received.", "messages_in"),
    ("wsclient.received", "By", "Payload received (characters of text messages).", "bytes_in"),
    ("wsclient.messages_sent", "{message}", "Data messages handed to the socket.", "messages_out"),
    ("wsclient.sent", "By", "Payload sent (characters of text messages).", "bytes_out"),
    (
        "wsclient.messages_dropped_in",
        "{message}",
        "Inbound frames dropped by the overflow policy.",
        "dropped_in",
    ),
    ("wsclient.messages_dropped_out", "{message}", "Sends dropped.", "dropped_out"),
    ("wsclient.handler_errors", "{error}", "Handlers and callbacks that raised.", "handler_errors"),
    (
        "wsclient.invalid_messages",
        "{message}",
        "Frames that failed to decode or validate.",
        "invalid_messages",
    ),
    ("wsclient.unknown_messages", "{message}", "Frames no registered model claimed.", "unknown_messages"),
    ("wsclient.sequence_gaps", "{gap}", "Sequence gaps and resets.", "sequence_gaps"),
    ("wsclient.heartbeat_misses", "{miss}", "Late pongs or inbound frames.", "heartbeat_misses"),
    ("wsclient.write_stalls", "{link}", "Links closed because the peer stopped reading.", "write_stalls"),
    ("wsclient.budget_waits", "{message}", "Messages that waited for the message budget.", "budget_waits"),
    ("wsclient.rotations", "{connection}", "Connections replaced make-before-break.", "rotations"),
    ("wsclient.ping_replies", "{ping}", "Venue application pings answered.", "ping_replies"),
    ("wsclient.duplicates_dropped", "{message}", "Copies not delivered (dedup_key).", "duplicates_dropped"),
)

#: Observable gauges (non-additive) per client/shard; a None figure is not observed.
_GAUGES: tuple[tuple[str, str, str, str], ...] = (
    ("wsclient.last_rtt", "s", "Round-trip time of the last answered heartbeat ping.", "last_rtt"),
    ("wsclient.last_rtt_age", "s", "Seconds since wsclient.last_rtt was measured.", "last_rtt_age"),
    ("wsclient.last_inbound_age", "s", "Seconds since the last inbound frame.", "seconds_since_last_inbound"),
)

#: Observable up-down counters (additive levels) per client/shard.
_LEVELS: tuple[tuple[str, str, str, str], ...] = (
    (
        "wsclient.inbound_queue.depth",
        "{item}",
        "Frames and deferred work waiting for the dispatcher.",
        "inbound_queued",
    ),
    ("wsclient.outbox.depth", "{message}", "Sends waiting in the outbox.", "outbox_queued"),
    ("wsclient.requests_pending", "{request}", "Requests waiting for their reply.", "requests_pending"),
)

_POOL_WIDE = frozenset({"duplicates_dropped", "sequence_gaps"})

_POOL_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    (
        "wsclient.pool.connect_waits",
        "{attempt}",
        "Connects that waited for the connect quota.",
        "connect_waits",
    ),
    ("wsclient.pool.held_messages", "{message}", "Messages held during an overlap.", "held"),
    ("wsclient.pool.stale_resubscribes", "{stream}", "Silent streams resubscribed.", "stale_resubscribes"),
    (
        "wsclient.pool.stale_replacements",
        "{connection}",
        "Connections replaced for a silent stream.",
        "stale_replacements",
    ),
    ("wsclient.pool.stream_moves", "{stream}", "Streams moved between shards.", "moves"),
)

_SINK_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("wsclient.sink.received", "{message}", "Messages handed to the sink.", "received"),
    ("wsclient.sink.stored", "{message}", "Messages the bus acknowledged as new.", "stored"),
    ("wsclient.sink.duplicates", "{message}", "Messages the bus acknowledged as a copy.", "duplicates"),
    ("wsclient.sink.retries", "{message}", "Entries sent again.", "retries"),
    ("wsclient.sink.timeouts", "{message}", "Acknowledgements that did not come in time.", "timeouts"),
    ("wsclient.sink.errors", "{message}", "Publishes refused or failed.", "errors"),
    ("wsclient.sink.waits", "{wait}", "Times a handler waited for room in the window.", "waits"),
    ("wsclient.sink.reconnects", "{connection}", "Connections to the bus after the first.", "reconnects"),
    (
        "wsclient.sink.reordered",
        "{message}",
        "Entries stored after a later one of the same key.",
        "reordered",
    ),
    ("wsclient.sink.abandoned", "{message}", "Entries unacknowledged when close() gave up.", "abandoned"),
)


class _Recorder:
    """One client's or shard's timings, recorded into the shared histograms with its attributes."""

    __slots__ = ("_attributes", "_handler", "_queue", "_rtt")

    def __init__(self, owner: OtelMetrics, attributes: _Attributes) -> None:
        self._attributes = attributes
        self._handler = owner.handler_duration
        self._queue = owner.queue_wait
        self._rtt = owner.rtt

    def handler_time(self, seconds: float) -> None:
        self._handler.record(seconds, self._attributes)

    def queue_wait(self, seconds: float) -> None:
        self._queue.record(seconds, self._attributes)

    def rtt(self, seconds: float) -> None:
        self._rtt.record(seconds, self._attributes)


@dataclass(slots=True)
class _Source:
    name: str
    target: Any
    kind: str
    detach: Callable[[], None]


class OtelMetrics:
    """OpenTelemetry instruments reading wsclient clients, pools and sinks.

    ``meter`` (or a meter of ``meter_provider``, or of the global provider) creates the instruments
    once, so make one per meter (:func:`instrument` does); :meth:`add` watches a target under a name
    (the ``wsclient.client`` or ``wsclient.sink`` attribute; a pool's shards also carry
    ``wsclient.shard``). :meth:`close` detaches the hooks and
    stops observing.
    """

    def __init__(
        self,
        target: Client | Pool | Any = None,
        *,
        name: str | None = None,
        meter_provider: MeterProvider | None = None,
        meter: Meter | None = None,
    ) -> None:
        if meter is None:
            from .. import __version__

            meter = otel_metrics.get_meter("wsclient", __version__, meter_provider=meter_provider)
        self._sources: dict[str, _Source] = {}
        self._numbers = itertools.count(1)
        self.handler_duration: Histogram = meter.create_histogram(
            "wsclient.handler.duration",
            unit="s",
            description="Time to deliver one frame: decoding, validation, callbacks and handlers.",
            explicit_bucket_boundaries_advisory=HANDLER_BUCKETS,
        )
        self.queue_wait: Histogram = meter.create_histogram(
            "wsclient.inbound_queue.wait",
            unit="s",
            description="Time a frame waited in the inbound queue before its dispatch.",
            explicit_bucket_boundaries_advisory=HANDLER_BUCKETS,
        )
        self.rtt: Histogram = meter.create_histogram(
            "wsclient.heartbeat.rtt",
            unit="s",
            description="Heartbeat ping round-trip times.",
            explicit_bucket_boundaries_advisory=RTT_BUCKETS,
        )
        for spec in _COUNTERS:
            meter.create_observable_counter(
                spec[0], [self._connection_callback(spec[3])], unit=spec[1], description=spec[2]
            )
        for spec in _GAUGES:
            meter.create_observable_gauge(
                spec[0], [self._connection_callback(spec[3])], unit=spec[1], description=spec[2]
            )
        for spec in _LEVELS:
            meter.create_observable_up_down_counter(
                spec[0], [self._connection_callback(spec[3])], unit=spec[1], description=spec[2]
            )
        meter.create_observable_gauge(
            "wsclient.connected",
            [self._observe_connected],
            unit="1",
            description="1 while the connection is open.",
        )
        meter.create_observable_up_down_counter(
            "wsclient.shard.streams",
            [self._observe_shard_streams],
            unit="{stream}",
            description="Streams per shard.",
        )
        meter.create_observable_up_down_counter(
            "wsclient.pool.streams",
            [self._pool_callback(lambda pool: pool.stats.streams)],
            unit="{stream}",
            description="Streams of the pool.",
        )
        meter.create_observable_up_down_counter(
            "wsclient.pool.shards",
            [self._pool_callback(lambda pool: len(pool.shards))],
            unit="{shard}",
            description="Shards of the pool.",
        )
        for spec in _POOL_COUNTERS:
            meter.create_observable_counter(
                spec[0],
                [self._pool_callback(_stat_reader(spec[3]))],
                unit=spec[1],
                description=spec[2],
            )
        for spec in _SINK_COUNTERS:
            meter.create_observable_counter(
                spec[0], [self._sink_callback(spec[3])], unit=spec[1], description=spec[2]
            )
        meter.create_observable_up_down_counter(
            "wsclient.sink.pending",
            [self._sink_callback("pending")],
            unit="{message}",
            description="Entries not yet acknowledged.",
        )
        meter.create_observable_gauge(
            "wsclient.sink.connected",
            [self._sink_callback("connected")],
            unit="1",
            description="1 while the sink has a live connection to the bus.",
        )
        if target is not None:
            self.add(target, name=name)
        elif name is not None:
            raise ConfigError("OtelMetrics(name=...) names a target: pass the client, pool or sink too")

    # -- targets ---------------------------------------------------------------------------------------

    def add(self, target: Client | Pool | Any, *, name: str | None = None) -> Self:
        """Watch ``target`` (a :class:`~wsclient.Client`, a :class:`~wsclient.Pool`, or a sink whose
        ``stats`` is a :class:`~wsclient.sinks.SinkStats`) under ``name`` (default ``client-1``,
        ``pool-1``, ``sink-1``, ... in the order added)."""
        kind = _kind(target)
        if name is None:
            name = f"{kind}-{next(self._numbers)}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string (the metrics' attribute), got {name!r}")
        if name in self._sources:
            raise ConfigError(f"name {name!r} is already used by another target: pick another")
        if any(source.target is target for source in self._sources.values()):
            raise ConfigError(f"{target!r} is already watched by these metrics")
        detach: Callable[[], None] = _nothing
        if isinstance(target, Client):
            recorder = _Recorder(self, {"wsclient.client": name})
            target.add_metrics(recorder)

            def detach() -> None:
                target.remove_metrics(recorder)

        elif isinstance(target, Pool):

            def recorder_for(index: int) -> MetricsRecorder:
                return _Recorder(self, {"wsclient.client": name, "wsclient.shard": index})

            target.add_metrics(recorder_for)

            def detach() -> None:
                target.remove_metrics(recorder_for)

        self._sources[name] = _Source(name, target, kind, detach)
        return self

    def remove(self, target_or_name: Client | Pool | Any | str) -> None:
        """Stop watching a target (given, or by its name) and detach its hooks."""
        for key, source in list(self._sources.items()):
            if key == target_or_name or source.target is target_or_name:
                del self._sources[key]
                source.detach()
                return
        raise KeyError(f"{target_or_name!r} is not watched by these metrics")

    def close(self) -> None:
        """Detach every hook; the observable instruments observe nothing more."""
        sources, self._sources = self._sources, {}
        for source in sources.values():
            source.detach()

    # -- what the callbacks read -----------------------------------------------------------------------

    def _connections(self) -> Iterator[tuple[_Attributes, ClientStats, ConnectionState, frozenset[str]]]:
        """Every watched connection: (attributes, stats, state, figures that are the pool's)."""
        for source in list(self._sources.values()):
            if source.kind == "client":
                client: Client = source.target
                yield {"wsclient.client": source.name}, client.stats, client.state, frozenset()
            elif source.kind == "pool":
                pool: Pool = source.target
                skip = _POOL_WIDE if pool.dedup is not None else frozenset()
                for info, stats in zip(pool.shards, pool.stats.shards, strict=False):
                    yield (
                        {"wsclient.client": source.name, "wsclient.shard": info.index},
                        stats,
                        info.state,
                        skip,
                    )

    def _connection_callback(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for attributes, stats, _, skip in self._connections():
                value = getattr(stats, attr)
                if value is not None and attr not in skip:
                    out.append(Observation(value, attributes))
            if attr in _POOL_WIDE:
                for source in self._of("pool"):
                    if source.target.dedup is not None:
                        out.append(
                            Observation(getattr(source.target.stats, attr), {"wsclient.client": source.name})
                        )
            return out

        return observe

    def _observe_connected(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(1 if state is ConnectionState.OPEN else 0, attributes)
            for attributes, _, state, _ in self._connections()
        ]

    def _observe_shard_streams(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(info.streams, {"wsclient.client": source.name, "wsclient.shard": info.index})
            for source in self._of("pool")
            for info in source.target.shards
        ]

    def _pool_callback(
        self, read: Callable[[Pool], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(read(source.target), {"wsclient.client": source.name})
                for source in self._of("pool")
            ]

        return observe

    def _sink_callback(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for source in self._of("sink"):
                stats: SinkStats = source.target.stats
                out.append(Observation(int(getattr(stats, attr)), {"wsclient.sink": source.name}))
            return out

        return observe

    def _of(self, kind: str) -> list[_Source]:
        return [source for source in list(self._sources.values()) if source.kind == kind]


def _stat_reader(attr: str) -> Callable[[Pool], int]:
    def read(pool: Pool) -> int:
        value: int = getattr(pool.stats, attr)
        return value

    return read


def _nothing() -> None:
    return None


def _kind(target: object) -> str:
    if isinstance(target, Client):
        return "client"
    if isinstance(target, Pool):
        return "pool"
    if isinstance(getattr(target, "stats", None), SinkStats):
        return "sink"
    raise ConfigError(
        f"OpenTelemetry metrics watch a wsclient Client, a Pool or a sink (an object whose .stats is a "
        f"SinkStats), got {type(target).__name__}"
    )


_per_provider: weakref.WeakKeyDictionary[MeterProvider, OtelMetrics] = weakref.WeakKeyDictionary()
_global: list[OtelMetrics] = []


def instrument(
    target: Client | Pool | Any, *, name: str | None = None, meter_provider: MeterProvider | None = None
) -> OtelMetrics:
    """Watch ``target`` with the :class:`OtelMetrics` of ``meter_provider`` (the global provider by
    default), made on first use, and return it. A meter creates an instrument name once (a second
    creation is ignored with a warning by the SDK), so every target of a provider shares one."""
    if meter_provider is None:
        if not _global:
            _global.append(OtelMetrics())
        metrics = _global[0]
    else:
        found = _per_provider.get(meter_provider)
        if found is None:
            found = _per_provider[meter_provider] = OtelMetrics(meter_provider=meter_provider)
        metrics = found
    return metrics.add(target, name=name)
