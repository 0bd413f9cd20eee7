"""Metrics: a real /metrics endpoint scraped over HTTP, OpenTelemetry read back through the SDK.

Every figure is checked against the source it exports (``client.stats``, ``pool.stats``, a sink's
``stats``) while real servers run: a :class:`~wsclient.testing.FeedServer` restarted under the client,
a :class:`~wsclient.testing.VenueServer` behind a pool of three shards, a ``redis-server`` behind a
:class:`~wsclient.sinks.RedisStreamSink`. The Grafana dashboard in ``examples/`` is checked against the
names a scrape really carries (and its PromQL against ``promtool`` when ``make peers`` installed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from wsclient import (
    Client,
    ClientConfig,
    ConfigError,
    Connected,
    Heartbeat,
    Message,
    Pool,
    Reconnect,
    VenueLimits,
)
from wsclient.metrics import HANDLER_BUCKETS, RTT_BUCKETS, Histogram, Histograms
from wsclient.metrics.otel import OtelMetrics
from wsclient.metrics.prometheus import WsclientCollector, instrument
from wsclient.sinks import RedisStreamSink
from wsclient.testing import FeedServer, VenueServer
from wsclient.testing.redis import RedisServer, find_redis_server
from wsclient.testing.venue import VenueTrade

from .conftest import Recorder, poll_until
from .peers import missing, require_binary

TIMEOUT = 10.0
DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"
SUBSCRIBE = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
FAST = ClientConfig(
    heartbeat=Heartbeat(interval=0.05, timeout=1.0),
    reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
)


# -- a real endpoint, scraped ---------------------------------------------------------------------------


class Scrape:
    """One scrape of a /metrics endpoint, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
        self.types = {family.name: family.type for family in text_string_to_metric_families(text)}

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (have, value)
            for sample, have, value in self.samples
            if sample == name and all(have.get(k, "") == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.series(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {len(found)} series in the scrape"
        return found[0][1]

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """``(le, cumulative count)`` of one histogram, in order of ``le``."""
        return sorted((float(have["le"]), value) for have, value in self.series(f"{name}_bucket", **labels))


@contextlib.contextmanager
def endpoint(registry: CollectorRegistry) -> Iterator[str]:
    """prometheus_client's own HTTP server on a free loopback port, stopped after."""
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def scrape(url: str) -> Scrape:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode()

    # In a thread, as Prometheus would from outside: the loop keeps serving the client meanwhile.
    return Scrape(await asyncio.to_thread(get))


def assert_histogram_shape(scraped: Scrape, name: str, **labels: str) -> None:
    buckets = scraped.buckets(name, **labels)
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), f"{name}: cumulative buckets must not decrease: {buckets}"
    assert buckets[-1][0] == float("inf")
    assert buckets[-1][1] == scraped.value(f"{name}_count", **labels)


# -- a client, scraped through a restart of its server --------------------------------------------------


@pytest.mark.usefixtures("backend")
async def test_a_scraped_endpoint_reports_client_stats_through_a_server_restart() -> None:
    handled = 0
    slow = 0

    def handler(frame: str | bytes) -> None:
        nonlocal handled, slow
        handled += 1
        if handled % 10 == 0:
            slow += 1
            time.sleep(0.003)  # a handler known to take > 2.5 ms, for the histogram's buckets

    async with FeedServer(rate=200) as feed:
        client = Client(feed.url, config=FAST)
        client.on_message(handler)
        client.subscribe(SUBSCRIBE)
        events = Recorder(client)
        registry = CollectorRegistry()
        registry.register(WsclientCollector(client, name="feed"))
        probe = Histograms()  # a second recorder beside the collector's: both get every timing
        client.add_metrics(probe)
        with endpoint(registry) as url:
            async with client:
                await client.wait_open(TIMEOUT)
                await poll_until(lambda: handled >= 30 and client.stats.last_rtt is not None, TIMEOUT)
                before = client.stats
                running = await scrape(url)
                after = client.stats
                received = running.value("wsclient_messages_received_total", client="feed", shard="")
                assert before.messages_in <= received <= after.messages_in
                assert running.value("wsclient_connected", client="feed") == 1
                assert running.value("wsclient_rtt_seconds_count", client="feed") >= 1
                assert running.value("wsclient_last_rtt_seconds", client="feed") > 0

                await feed.restart()
                await events.wait_for(Connected, 2, TIMEOUT)
                mark, pongs = handled, probe.round_trip.count
                # Frames and a pong on the new connection.
                await poll_until(lambda: handled >= mark + 20 and probe.round_trip.count > pongs, TIMEOUT)
            final = await scrape(url)
    stats = client.stats
    labels = {"client": "feed", "shard": ""}
    assert final.types["wsclient_messages_received"] == "counter"
    assert final.value("wsclient_messages_received_total", **labels) == stats.messages_in
    assert final.value("wsclient_received_bytes_total", **labels) == stats.bytes_in
    assert final.value("wsclient_messages_sent_total", **labels) == stats.messages_out == 2  # two subscribes
    assert final.value("wsclient_connects_total", **labels) == stats.connects == 2
    assert final.value("wsclient_reconnects_total", **labels) == stats.reconnects == 1
    assert final.value("wsclient_messages_dropped_total", direction="in", **labels) == stats.dropped_in == 0
    assert final.value("wsclient_connected", **labels) == 0  # closed
    # One handler time and one queue wait per frame delivered, none left out.
    assert final.value("wsclient_handler_seconds_count", **labels) == handled
    assert final.value("wsclient_inbound_queue_wait_seconds_count", **labels) == handled
    assert final.value("wsclient_rtt_seconds_count", **labels) == probe.round_trip.count >= 2
    assert final.value("wsclient_handler_seconds_sum", **labels) == pytest.approx(probe.handler.sum)
    for name in ("wsclient_handler_seconds", "wsclient_inbound_queue_wait_seconds", "wsclient_rtt_seconds"):
        assert_histogram_shape(final, name, **labels)
    above = dict(final.buckets("wsclient_handler_seconds", **labels))
    assert handled - above[0.0025] >= slow > 0, "every 3 ms handler lies above the 2.5 ms bound"
    assert final.value("wsclient_handler_seconds_sum", **labels) >= slow * 0.003
    # Sync handlers run as frames are read: no frame waited in the queue.
    assert dict(final.buckets("wsclient_inbound_queue_wait_seconds", **labels))[0.000005] == handled


@pytest.mark.usefixtures("backend")
async def test_frames_held_behind_an_async_handler_show_in_queue_depth_and_wait() -> None:
    held, release = asyncio.Event(), asyncio.Event()
    handled = 0

    async def handler(frame: str | bytes) -> None:
        nonlocal handled
        handled += 1
        if handled == 5:
            held.set()
            await release.wait()

    async with FeedServer(rate=300) as feed:
        client = Client(feed.url, config=FAST)
        client.on_message(handler)
        client.subscribe(SUBSCRIBE)
        registry = CollectorRegistry()
        instrument(client, name="bot", registry=registry)
        with endpoint(registry) as url:
            async with client:
                await asyncio.wait_for(held.wait(), TIMEOUT)
                await poll_until(lambda: client.stats.inbound_queued >= 3, TIMEOUT)
                during = await scrape(url)
                # The frames queued now wait at least this long: the quantity measured, not a guess.
                await asyncio.sleep(0.03)
                release.set()
                await poll_until(lambda: handled >= 20, TIMEOUT)
            final = await scrape(url)
    assert during.value("wsclient_inbound_queue_depth", client="bot") >= 3
    waits = dict(final.buckets("wsclient_inbound_queue_wait_seconds", client="bot"))
    assert waits[float("inf")] - waits[0.025] >= 3, waits
    # The held handler's own time covers its wait for the release.
    handler_times = dict(final.buckets("wsclient_handler_seconds", client="bot"))
    assert handler_times[float("inf")] - handler_times[0.025] >= 1, handler_times


class Ack(Message):
    type: Literal["ack"]


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    seq: int


@pytest.mark.usefixtures("backend")
async def test_typed_handlers_registered_after_metrics_were_attached_are_timed_and_called() -> None:
    acks: list[Ack] = []
    trades: list[Trade] = []
    async with FeedServer(rate=200) as feed:
        client = Client(feed.url)
        client.on(Ack, acks.append)
        client.on_unknown(lambda frame: None)  # trades, until a model claims them
        client.subscribe(SUBSCRIBE)
        async with client:
            await poll_until(lambda: len(acks) == 1, TIMEOUT)  # the router is compiled and routing
            probe = Histograms()
            client.add_metrics(probe)
            client.on(Trade, trades.append)  # the router rebuilds: the timed target must follow it
            await poll_until(lambda: len(trades) >= 20, TIMEOUT)
            client.remove_metrics(probe)
            timed = probe.handler.count
            mark = len(trades)
            await poll_until(lambda: len(trades) >= mark + 10, TIMEOUT)
    assert timed >= 20 and probe.handler.count == timed, "timed while attached, and only then"
    assert [t.seq for t in trades] == list(range(trades[0].seq, trades[0].seq + len(trades)))


# -- OpenTelemetry, read back through the SDK -----------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


@pytest.mark.usefixtures("backend")
async def test_opentelemetry_instruments_read_back_through_the_sdk_reader() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handled = 0

    def handler(frame: str | bytes) -> None:
        nonlocal handled
        handled += 1

    try:
        async with FeedServer(rate=200) as feed:
            client = Client(feed.url, config=FAST)
            client.on_message(handler)
            client.subscribe(SUBSCRIBE)
            events = Recorder(client)
            metrics = OtelMetrics(client, name="feed", meter_provider=provider)
            async with client:
                await client.wait_open(TIMEOUT)
                await poll_until(lambda: handled >= 20 and client.stats.last_rtt is not None, TIMEOUT)
                running = otel_points(reader)
                assert running["wsclient.connected"][0].value == 1
                await feed.restart()
                await events.wait_for(Connected, 2, TIMEOUT)
                mark = handled
                await poll_until(lambda: handled >= mark + 20, TIMEOUT)
        points = otel_points(reader)
        stats = client.stats
        attributes = {"wsclient.client": "feed"}

        def number(name: str) -> float:
            (point,) = points[name]
            assert isinstance(point, NumberDataPoint) and dict(point.attributes) == attributes
            return point.value

        assert number("wsclient.messages_received") == stats.messages_in
        assert number("wsclient.reconnects") == stats.reconnects == 1
        assert number("wsclient.connects") == 2
        assert number("wsclient.received") == stats.bytes_in
        assert number("wsclient.connected") == 0
        assert number("wsclient.last_rtt") == pytest.approx(stats.last_rtt)
        (handler_time,) = points["wsclient.handler.duration"]
        (queue_wait,) = points["wsclient.inbound_queue.wait"]
        (rtt,) = points["wsclient.heartbeat.rtt"]
        assert isinstance(handler_time, HistogramDataPoint)
        assert handler_time.count == queue_wait.count == handled
        assert tuple(handler_time.explicit_bounds) == HANDLER_BUCKETS
        assert tuple(rtt.explicit_bounds) == RTT_BUCKETS
        assert rtt.count >= 1 and rtt.sum > 0
        assert dict(rtt.attributes) == attributes
        metrics.close()
        closed = otel_points(reader)
        assert "wsclient.messages_received" not in closed or not closed["wsclient.messages_received"]
    finally:
        provider.shutdown()


# -- a pool: one series per shard -----------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
async def test_a_pool_exports_every_shard_under_its_own_label_to_both_exporters() -> None:
    streams = [f"s{i}@trade" for i in range(10)]
    per_stream = 20
    trades = 0

    def on_trade(trade: VenueTrade) -> None:
        nonlocal trades
        trades += 1

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        async with VenueServer(rate=0) as venue:
            pool = Pool(
                venue.url,
                subscribe=lambda names: {"method": "SUBSCRIBE", "params": list(names), "id": 1},
                config=ClientConfig(discriminator="e", heartbeat=Heartbeat(interval=0.05, timeout=1.0)),
                limits=VenueLimits(streams_per_connection=4, subscribe_batch=4),
                dedup_key=lambda trade: (trade.s, trade.t),
            )
            pool.on(VenueTrade, on_trade)
            pool.on_unknown(lambda frame: None)  # the venue's acknowledgements
            registry = CollectorRegistry()
            registry.register(WsclientCollector(pool, name="venue"))
            # A second exporter on the same shards: both recorders get every timing.
            OtelMetrics(pool, name="venue", meter_provider=provider)
            pool.add_streams(streams)
            with endpoint(registry) as url:
                async with pool:
                    await pool.wait_open(TIMEOUT)
                    await venue.wait_until(lambda: all(venue.subscribers(s) for s in streams), TIMEOUT)
                    for stream in streams:
                        venue.emit(stream, per_stream)
                    await poll_until(lambda: trades == per_stream * len(streams), TIMEOUT)
                    await poll_until(lambda: all(s.last_rtt is not None for s in pool.stats.shards), TIMEOUT)
                scraped = await scrape(url)
            points = otel_points(reader)
        stats = pool.stats
        assert [info.streams for info in pool.shards] == [4, 4, 2]
        for info, shard in zip(pool.shards, stats.shards, strict=True):
            labels = {"client": "venue", "shard": str(info.index)}
            assert scraped.value("wsclient_messages_received_total", **labels) == shard.messages_in
            assert scraped.value("wsclient_shard_streams", **labels) == info.streams
            assert scraped.value("wsclient_rtt_seconds_count", **labels) >= 1
            assert_histogram_shape(scraped, "wsclient_handler_seconds", **labels)
        handler_counts = scraped.series("wsclient_handler_seconds_count", client="venue")
        assert sorted(labels["shard"] for labels, _ in handler_counts) == ["0", "1", "2"]
        # Every trade and acknowledgement delivered once, timed once, on the shard that read it.
        assert sum(count for _, count in handler_counts) == sum(s.messages_in for s in stats.shards)
        assert scraped.value("wsclient_pool_streams", client="venue") == 10
        assert scraped.value("wsclient_pool_shards", client="venue") == 3
        # The de-duplicator is the pool's: its figure once, not once per shard.
        (dropped,) = scraped.series("wsclient_duplicates_dropped_total", client="venue")
        assert dropped == ({"client": "venue", "shard": ""}, stats.duplicates_dropped)

        otel_counts = {
            dict(p.attributes)["wsclient.shard"]: p.count for p in points["wsclient.handler.duration"]
        }
        prom_counts = {int(labels["shard"]): count for labels, count in handler_counts}
        assert otel_counts == prom_counts
        shard_received = {
            dict(p.attributes).get("wsclient.shard"): p.value for p in points["wsclient.messages_received"]
        }
        assert shard_received == {
            info.index: s.messages_in for info, s in zip(pool.shards, stats.shards, strict=True)
        }
    finally:
        provider.shutdown()


# -- a sink ---------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        missing("redis-server is not installed", "run `make peers` as root, or apt-get install redis-server")
    async with RedisServer(binary=binary) as server:
        yield server


def trade_stream(trade: VenueTrade) -> str:
    return f"md:trades:{trade.s}"


def trade_id(trade: VenueTrade) -> str:
    return f"{trade.s}:{trade.t}"


@pytest.mark.usefixtures("backend")
async def test_a_sinks_counters_are_scraped(redis_server: RedisServer) -> None:
    streams = ["btc@trade", "eth@trade"]
    sink = RedisStreamSink(redis_server.url, stream=trade_stream, msg_id=trade_id, reconnect_initial=0.01)
    async with VenueServer(rate=0) as venue:
        client = Client(venue.url, config=ClientConfig(discriminator="e"))
        client.on(VenueTrade, sink)
        client.on_unknown(lambda frame: None)
        client.subscribe({"method": "SUBSCRIBE", "params": streams, "id": 1})
        registry = CollectorRegistry()
        collector = WsclientCollector().add(client, name="venue").add(sink, name="redis")
        registry.register(collector)
        with endpoint(registry) as url:
            async with sink, client:
                await venue.wait_until(lambda: all(venue.subscribers(s) for s in streams), TIMEOUT)
                for stream in streams:
                    venue.emit(stream, 150)
                await poll_until(lambda: sink.stats.received == 300, TIMEOUT)
                assert await sink.flush(TIMEOUT)
                scraped = await scrape(url)
                stats = sink.stats
            closed = await scrape(url)
    assert scraped.value("wsclient_sink_received_total", sink="redis") == stats.received == 300
    assert scraped.value("wsclient_sink_stored_total", sink="redis") == stats.stored == 300
    assert scraped.value("wsclient_sink_duplicates_total", sink="redis") == stats.duplicates == 0
    assert scraped.value("wsclient_sink_pending", sink="redis") == stats.pending == 0
    assert scraped.value("wsclient_sink_connected", sink="redis") == 1
    assert scraped.value("wsclient_messages_received_total", client="venue") == client.stats.messages_in
    assert closed.value("wsclient_sink_connected", sink="redis") == 0


# -- the Grafana dashboard ------------------------------------------------------------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            out.append((panel["title"], target["expr"]))
    return out


def promql(expr: str) -> str:
    """The expression as Prometheus gets it from Grafana (its interval variable filled in)."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h")


@pytest.mark.usefixtures("backend")
async def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(redis_server: RedisServer) -> None:
    exprs = dashboard_exprs()
    titles = {title for title, _ in exprs}
    for wanted in ("Messages/s", "Reconnects", "RTT", "Handler time p99", "Queue wait p99", "Inbound queue"):
        assert any(wanted in title for title in titles), f"no panel for {wanted}: {sorted(titles)}"
    assert any("Sink" in title for title in titles)

    sink = RedisStreamSink(redis_server.url, stream=trade_stream, msg_id=trade_id)
    async with FeedServer(rate=100) as feed, VenueServer(rate=0) as venue:
        client = Client(feed.url, config=FAST)
        client.on_message(lambda frame: None)
        client.subscribe(SUBSCRIBE)
        pool = Pool(
            venue.url, subscribe=lambda names: {"method": "SUBSCRIBE", "params": list(names), "id": 1}
        )
        pool.on_unknown(lambda frame: None)
        pool.add_streams(["btc@trade"])
        registry = CollectorRegistry()
        registry.register(WsclientCollector().add(client, name="feed").add(pool, name="venue").add(sink))
        with endpoint(registry) as url:
            async with sink, client, pool:
                await client.wait_open(TIMEOUT)
                await poll_until(lambda: client.stats.last_rtt is not None, TIMEOUT)
                scraped = await scrape(url)
    exported = scraped.names
    labels = {"client", "shard", "sink", "direction", "le"}
    for title, expr in exprs:
        names = set(re.findall(r"\bwsclient_[a-z0-9_]+", expr))
        assert names, f"{title}: {expr} queries no wsclient metric"
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used = {label.strip() for label in group.split(",") if label.strip()}
            assert used <= labels, f"{title}: groups by {sorted(used - labels)}, a label no series has"


def test_the_dashboards_promql_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", why="run `make peers` as root (Debian's prometheus package)")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": promql(expr)}
                    for i, (_, expr) in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "rules.json"  # JSON is YAML: promtool reads it as its rules file
    path.write_text(json.dumps(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- bad input ------------------------------------------------------------------------------------------


async def test_bad_input_fails_at_once_naming_the_fix() -> None:
    client = Client("ws://127.0.0.1:9/")
    collector = WsclientCollector(client, name="a")
    with pytest.raises(ConfigError, match="already used"):
        collector.add(Client("ws://127.0.0.1:9/"), name="a")
    with pytest.raises(ConfigError, match="already watched"):
        collector.add(client, name="b")
    with pytest.raises(ConfigError, match="Client, a Pool or a sink"):
        collector.add(object())
    with pytest.raises(ConfigError, match="non-empty string"):
        collector.add(Client("ws://127.0.0.1:9/"), name="")
    with pytest.raises(ConfigError, match="strictly increasing"):
        WsclientCollector(handler_buckets=(0.1, 0.01))
    with pytest.raises(ConfigError, match="finite seconds"):
        Histogram((0.0, 1.0))
    with pytest.raises(ConfigError, match="lacks handler_time"):
        client.add_metrics(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shard index"):
        Pool("ws://127.0.0.1:9/", subscribe=lambda s: {}).add_metrics(Histograms())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="names a target"):
        OtelMetrics(name="x")
    collector.close()
    with pytest.raises(KeyError):
        collector.remove("a")


def test_histogram_buckets_count_values_at_their_bound() -> None:
    histogram = Histogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.005, 0.01, 0.5):
        histogram.observe(value)
    snap = histogram.snapshot()
    # Prometheus' "le": a value equal to a bound counts in that bucket.
    assert snap.buckets == ((0.001, 2), (0.01, 4), (float("inf"), 5))
    assert snap.count == 5 and snap.sum == pytest.approx(0.5165)
