"""A Prometheus collector for clients, pools and sinks (``pip install 'wsclient[prometheus]'``).

:class:`WsclientCollector` is a ``prometheus_client`` custom collector: each scrape reads the live
figures (``client.stats``, ``pool.stats`` and ``pool.shards``, a sink's ``stats``) and yields them as
metric families, counters as counters, gauges as gauges, plus histograms of handler time, inbound queue
wait and heartbeat round-trip time, which it records by attaching a
:class:`~wsclient.metrics.Histograms` to every client and every shard it watches::

    from prometheus_client import REGISTRY, start_http_server
    from wsclient.metrics.prometheus import WsclientCollector

    collector = WsclientCollector()
    collector.add(client, name="binance")      # a Client: labels client="binance", shard=""
    collector.add(pool, name="okx")            # a Pool: one series per shard, shard="0", "1", ...
    collector.add(sink, name="nats")           # a sink: label sink="nats"
    REGISTRY.register(collector)
    start_http_server(9108, addr="127.0.0.1")

or, with one collector per registry made on first use, ``instrument(client, name="binance")``.

Labels stay bounded: ``client`` (the name given, per client or pool), ``shard`` (a pool's live shards;
a retired shard's series end, its index is not reused), ``sink``, and ``direction`` (``in``/``out``)
on drops. Reading the figures is safe from the exporter's thread (``start_http_server`` runs one): a
scrape only reads counters.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

try:
    from prometheus_client.core import (
        REGISTRY,
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - the extra is documented where this is imported
    raise ImportError(
        "wsclient.metrics.prometheus needs prometheus-client: pip install 'wsclient[prometheus]'"
    ) from exc

from ..client import Client
from ..errors import ConfigError
from ..events import ClientStats
from ..pool import Pool
from ..sinks.base import SinkStats
from ..state import ConnectionState
from . import HANDLER_BUCKETS, RTT_BUCKETS, Histogram, Histograms, MetricsRecorder

__all__ = ["COUNTERS", "GAUGES", "HISTOGRAMS", "WsclientCollector", "instrument"]

_LABELS = ("client", "shard")

#: Counters of a client or shard: (metric name without ``_total``, help, ``ClientStats`` field).
COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "wsclient_connects",
        "Successful connections, the first and make-before-break ones included.",
        "connects",
    ),
    ("wsclient_reconnects", "Connections replacing a lost one.", "reconnects"),
    (
        "wsclient_connect_failures",
        "Connect attempts that failed before the connection was open.",
        "connect_failures",
    ),
    ("wsclient_messages_received", "Data messages received.", "messages_in"),
    (
        "wsclient_received_bytes",
        "Payload received: bytes of binary, characters of text messages.",
        "bytes_in",
    ),
    ("wsclient_messages_sent", "Data messages handed to the socket.", "messages_out"),
    ("wsclient_sent_bytes", "Payload sent: bytes of binary, characters of text messages.", "bytes_out"),
    ("wsclient_handler_errors", "Handlers and callbacks that raised.", "handler_errors"),
    ("wsclient_invalid_messages", "Frames that failed to decode or validate.", "invalid_messages"),
    ("wsclient_unknown_messages", "Frames no registered model claimed.", "unknown_messages"),
    ("wsclient_sequence_gaps", "Sequence gaps and resets (seq_key, dedup_key).", "sequence_gaps"),
    (
        "wsclient_heartbeat_misses",
        "Pongs or inbound frames that came late, forgiven or fatal.",
        "heartbeat_misses",
    ),
    ("wsclient_write_stalls", "Links closed because the peer stopped reading.", "write_stalls"),
    ("wsclient_budget_waits", "Messages that waited for the venue's message budget.", "budget_waits"),
    ("wsclient_rotations", "Connections replaced make-before-break.", "rotations"),
    ("wsclient_ping_replies", "Venue application pings answered.", "ping_replies"),
    ("wsclient_duplicates_dropped", "Copies not delivered (dedup_key).", "duplicates_dropped"),
)

#: Gauges of a client or shard: (metric name, help, ``ClientStats`` field); a figure that is None
#: (no round trip measured yet) is left out of the scrape.
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("wsclient_last_rtt_seconds", "Round-trip time of the last answered heartbeat ping.", "last_rtt"),
    (
        "wsclient_last_rtt_age_seconds",
        "Seconds since wsclient_last_rtt_seconds was measured.",
        "last_rtt_age",
    ),
    (
        "wsclient_last_inbound_age_seconds",
        "Seconds since the last inbound frame.",
        "seconds_since_last_inbound",
    ),
    (
        "wsclient_inbound_queue_depth",
        "Frames and deferred work waiting for the dispatcher.",
        "inbound_queued",
    ),
    ("wsclient_outbox_depth", "Sends waiting in the outbox for a connection.", "outbox_queued"),
    ("wsclient_requests_pending", "client.request() calls waiting for their reply.", "requests_pending"),
)

#: Histograms of a client or shard: (metric name, help, attribute of :class:`Histograms`).
HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    (
        "wsclient_handler_seconds",
        "Time to deliver one frame: decoding, validation, callbacks and handlers (awaited ones included).",
        "handler",
    ),
    (
        "wsclient_inbound_queue_wait_seconds",
        "Time a frame waited in the inbound queue before its dispatch (0 when delivered as read).",
        "queue",
    ),
    ("wsclient_rtt_seconds", "Heartbeat ping round-trip times.", "round_trip"),
)

#: A pool's shards share one de-duplicator: these figures are the pool's, exported once per pool
#: (``shard=""``) rather than repeated by every shard.
_POOL_WIDE = frozenset({"duplicates_dropped", "sequence_gaps"})

_POOL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "wsclient_pool_connect_waits",
        "Connect attempts that waited for the venue's connect quota.",
        "connect_waits",
    ),
    ("wsclient_pool_held_messages", "Messages held during an overlap, then delivered in order.", "held"),
    ("wsclient_pool_stale_resubscribes", "Silent streams resubscribed.", "stale_resubscribes"),
    (
        "wsclient_pool_stale_replacements",
        "Connections replaced because a stream stayed silent.",
        "stale_replacements",
    ),
    ("wsclient_pool_stream_moves", "Streams moved between shards (repacking).", "moves"),
)

_SINK_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("wsclient_sink_received", "Messages handed to the sink.", "received"),
    ("wsclient_sink_stored", "Messages the bus acknowledged as new.", "stored"),
    ("wsclient_sink_duplicates", "Messages the bus acknowledged as a copy.", "duplicates"),
    ("wsclient_sink_retries", "Entries sent again after a failure, timeout or reconnect.", "retries"),
    ("wsclient_sink_timeouts", "Acknowledgements that did not come in time.", "timeouts"),
    ("wsclient_sink_errors", "Publishes refused or failed.", "errors"),
    ("wsclient_sink_waits", "Times a handler waited for room in the window (back-pressure).", "waits"),
    ("wsclient_sink_reconnects", "Connections to the bus after the first.", "reconnects"),
    ("wsclient_sink_reordered", "Entries stored after a later one of the same key.", "reordered"),
    ("wsclient_sink_abandoned", "Entries unacknowledged when close() gave up.", "abandoned"),
)


@dataclass(slots=True)
class _ClientSource:
    name: str
    client: Client
    histograms: Histograms


@dataclass(slots=True)
class _PoolSource:
    name: str
    pool: Pool
    make: Callable[[int], MetricsRecorder]
    histograms: dict[int, Histograms]


@dataclass(slots=True)
class _SinkSource:
    name: str
    sink: Any


_Source = _ClientSource | _PoolSource | _SinkSource


class _Families:
    """The metric families of one scrape (or, empty, of ``describe()``)."""

    def __init__(self) -> None:
        self.counters = {name: CounterMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in COUNTERS}
        self.dropped = CounterMetricFamily(
            "wsclient_messages_dropped",
            "Messages not delivered: inbound frames (overflow policy) and sends (outbox, lost link, close).",
            labels=(*_LABELS, "direction"),
        )
        self.connected = GaugeMetricFamily(
            "wsclient_connected", "1 while the connection is open, else 0.", labels=_LABELS
        )
        self.gauges = {name: GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in GAUGES}
        self.histograms = {
            name: HistogramMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in HISTOGRAMS
        }
        self.shard_streams = GaugeMetricFamily(
            "wsclient_shard_streams", "Streams a pool's shard carries.", labels=_LABELS
        )
        self.pool_streams = GaugeMetricFamily(
            "wsclient_pool_streams", "Streams of the pool.", labels=("client",)
        )
        self.pool_shards = GaugeMetricFamily(
            "wsclient_pool_shards", "Shards of the pool.", labels=("client",)
        )
        self.pool_counters = {
            name: CounterMetricFamily(name, doc, labels=("client",)) for name, doc, _ in _POOL_COUNTERS
        }
        self.sink_counters = {
            name: CounterMetricFamily(name, doc, labels=("sink",)) for name, doc, _ in _SINK_COUNTERS
        }
        self.sink_pending = GaugeMetricFamily(
            "wsclient_sink_pending", "Entries not yet acknowledged (queued or in flight).", labels=("sink",)
        )
        self.sink_connected = GaugeMetricFamily(
            "wsclient_sink_connected", "1 while the sink has a live connection to the bus.", labels=("sink",)
        )

    def all(self) -> Iterator[Metric]:
        yield from self.counters.values()
        yield self.dropped
        yield self.connected
        yield from self.gauges.values()
        yield from self.histograms.values()
        yield self.shard_streams
        yield self.pool_streams
        yield self.pool_shards
        yield from self.pool_counters.values()
        yield from self.sink_counters.values()
        yield self.sink_pending
        yield self.sink_connected

    def connection(
        self,
        labels: list[str],
        stats: ClientStats,
        state: ConnectionState,
        histograms: Histograms | None,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        for name, _, attr in COUNTERS:
            if attr not in skip:
                self.counters[name].add_metric(labels, getattr(stats, attr))
        self.dropped.add_metric([*labels, "in"], stats.dropped_in)
        self.dropped.add_metric([*labels, "out"], stats.dropped_out)
        self.connected.add_metric(labels, 1.0 if state is ConnectionState.OPEN else 0.0)
        for name, _, attr in GAUGES:
            value = getattr(stats, attr)
            if value is not None:
                self.gauges[name].add_metric(labels, value)
        if histograms is not None:
            for name, _, attr in HISTOGRAMS:
                _add_histogram(self.histograms[name], labels, getattr(histograms, attr))


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    snap = histogram.snapshot()
    family.add_metric(labels, [(_le(bound), n) for bound, n in snap.buckets], snap.sum)


def _le(bound: float) -> str:
    # prometheus_client's own histograms spell bounds this way (repr of the float, "+Inf").
    return "+Inf" if bound == float("inf") else repr(bound)


class WsclientCollector:
    """A ``prometheus_client`` collector for wsclient clients, pools and sinks.

    ``WsclientCollector(target, name=...)`` watches one target at once; :meth:`add` adds more (one
    collector per registry: every target exports the same metric names, which a registry accepts from
    one collector only). Register it with ``REGISTRY.register(collector)``; :meth:`close` detaches
    its recorders from every client and shard.

    ``handler_buckets`` (handler time and queue wait) and ``rtt_buckets`` are the histograms' upper
    bounds in seconds.
    """

    def __init__(
        self,
        target: Client | Pool | Any = None,
        *,
        name: str | None = None,
        handler_buckets: Iterable[float] = HANDLER_BUCKETS,
        rtt_buckets: Iterable[float] = RTT_BUCKETS,
    ) -> None:
        self._handler_buckets = tuple(handler_buckets)
        self._rtt_buckets = tuple(rtt_buckets)
        Histograms(self._handler_buckets, self._rtt_buckets)  # bad bounds fail here, not at the first add
        self._sources: dict[str, _Source] = {}
        self._numbers = itertools.count(1)
        if target is not None:
            self.add(target, name=name)
        elif name is not None:
            raise ConfigError("WsclientCollector(name=...) names a target: pass the client, pool or sink too")

    def add(self, target: Client | Pool | Any, *, name: str | None = None) -> Self:
        """Watch ``target`` (a :class:`~wsclient.Client`, a :class:`~wsclient.Pool`, or a sink: any
        object whose ``stats`` is a :class:`~wsclient.sinks.SinkStats`) under the label ``name``
        (default: ``client-1``, ``pool-1``, ``sink-1``, ... in the order added)."""
        kind = _kind(target)
        if name is None:
            name = f"{kind}-{next(self._numbers)}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string (the metrics' label), got {name!r}")
        if name in self._sources:
            raise ConfigError(
                f"name {name!r} is already used by another target of this collector: pick another"
            )
        if any(_target(source) is target for source in self._sources.values()):
            raise ConfigError(f"{target!r} is already watched by this collector")
        source: _Source
        if isinstance(target, Client):
            histograms = self._histograms()
            target.add_metrics(histograms)
            source = _ClientSource(name, target, histograms)
        elif isinstance(target, Pool):
            by_shard: dict[int, Histograms] = {}

            def recorder_for(index: int) -> MetricsRecorder:
                histograms = by_shard[index] = self._histograms()
                return histograms

            target.add_metrics(recorder_for)
            source = _PoolSource(name, target, recorder_for, by_shard)
        else:
            source = _SinkSource(name, target)
        self._sources[name] = source
        return self

    def remove(self, target_or_name: Client | Pool | Any | str) -> None:
        """Stop watching a target (given, or by its name) and detach its recorders."""
        for key, source in list(self._sources.items()):
            if key == target_or_name or _target(source) is target_or_name:
                del self._sources[key]
                _detach(source)
                return
        raise KeyError(f"{target_or_name!r} is not watched by this collector")

    def close(self) -> None:
        """Detach every recorder (the collector exports nothing more). Unregister it from its
        registry too: ``REGISTRY.unregister(collector)``."""
        sources, self._sources = self._sources, {}
        for source in sources.values():
            _detach(source)

    def _histograms(self) -> Histograms:
        return Histograms(self._handler_buckets, self._rtt_buckets)

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (what a registry checks names against)."""
        return list(_Families().all())

    def collect(self) -> Iterable[Metric]:
        """The metric families with the figures of this moment."""
        families = _Families()
        for source in list(self._sources.values()):
            if isinstance(source, _ClientSource):
                client = source.client
                families.connection([source.name, ""], client.stats, client.state, source.histograms)
            elif isinstance(source, _PoolSource):
                _collect_pool(families, source)
            else:
                _collect_sink(families, source)
        return list(families.all())


def _collect_pool(families: _Families, source: _PoolSource) -> None:
    pool, name = source.pool, source.name
    stats = pool.stats
    infos = pool.shards  # the same order as stats.shards: both read the live shards in turn
    shared = pool.dedup is not None
    live = set()
    for info, shard_stats in zip(infos, stats.shards, strict=False):
        labels = [name, str(info.index)]
        live.add(info.index)
        histograms = source.histograms.get(info.index)
        families.connection(
            labels, shard_stats, info.state, histograms, _POOL_WIDE if shared else frozenset()
        )
        families.shard_streams.add_metric(labels, info.streams)
    if shared:
        families.counters["wsclient_duplicates_dropped"].add_metric([name, ""], stats.duplicates_dropped)
        families.counters["wsclient_sequence_gaps"].add_metric([name, ""], stats.sequence_gaps)
    families.pool_streams.add_metric([name], stats.streams)
    families.pool_shards.add_metric([name], len(infos))
    for metric, _, attr in _POOL_COUNTERS:
        families.pool_counters[metric].add_metric([name], getattr(stats, attr))
    for index in [i for i in list(source.histograms) if i not in live]:
        source.histograms.pop(index, None)  # a retired shard: its series end


def _collect_sink(families: _Families, source: _SinkSource) -> None:
    stats: SinkStats = source.sink.stats
    labels = [source.name]
    for metric, _, attr in _SINK_COUNTERS:
        families.sink_counters[metric].add_metric(labels, getattr(stats, attr))
    families.sink_pending.add_metric(labels, stats.pending)
    families.sink_connected.add_metric(labels, 1.0 if stats.connected else 0.0)


def _kind(target: object) -> str:
    if isinstance(target, Client):
        return "client"
    if isinstance(target, Pool):
        return "pool"
    stats = getattr(target, "stats", None)
    if isinstance(stats, SinkStats):
        return "sink"
    raise ConfigError(
        f"a collector watches a wsclient Client, a Pool or a sink (an object whose .stats is a SinkStats), "
        f"got {type(target).__name__}"
    )


def _target(source: _Source) -> object:
    if isinstance(source, _ClientSource):
        return source.client
    if isinstance(source, _PoolSource):
        return source.pool
    return source.sink


def _detach(source: _Source) -> None:
    if isinstance(source, _ClientSource):
        source.client.remove_metrics(source.histograms)
    elif isinstance(source, _PoolSource):
        source.pool.remove_metrics(source.make)


_per_registry: weakref.WeakKeyDictionary[CollectorRegistry, WsclientCollector] = weakref.WeakKeyDictionary()


def instrument(
    target: Client | Pool | Any, *, name: str | None = None, registry: CollectorRegistry = REGISTRY
) -> WsclientCollector:
    """Watch ``target`` with the collector of ``registry`` (made and registered on first use) and
    return that collector: ``instrument(client, name="binance")`` is all an application needs with
    ``prometheus_client``'s default registry."""
    collector = _per_registry.get(registry)
    if collector is None:
        collector = _per_registry[registry] = WsclientCollector()
        registry.register(collector)
    return collector.add(target, name=name)
