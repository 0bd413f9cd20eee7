"""One benchmark run in this process: ``python -m benchmarks.clients '<json spec>'``.

The orchestrator (benchmarks/run.py) starts a fresh process per run, so that no variant inherits
another's warm caches, heap or event loop. The spec names the measure and the variant; the process
prints one line ``RESULT {json}`` at the end (``ok``, the figures, or ``skipped``/``error``).

Variants per measure (``VARIANTS``) are functions of the same shape; every typed variant validates
with the same ``TypeAdapter`` (benchmarks/models.py) and hands the message to the same handler. The
Pool's measures live in benchmarks/pool.py.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import random
import resource
import sys
import time
import traceback
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import bus, pool
from benchmarks.models import ADAPTER, MODELS, End, LatencySink, Sink
from benchmarks.profiling import profiled
from benchmarks.proxy import BlackholeProxy

RESULT = "RESULT "
SUBSCRIBE = '{"op":"subscribe","channel":"feed"}'
# Dead-link settings from the issue: heartbeat I=1.0 s, T=1.0 s; first backoff delay 0.1 s.
HB_INTERVAL = 1.0
HB_TIMEOUT = 1.0
FIRST_DELAY = 0.1


class Unavailable(Exception):
    """This variant cannot run here (a backend or an API is missing); the row is skipped."""


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------- wsclient


def typed_api() -> bool:
    from wsclient import Client

    return hasattr(Client, "on")


def wsclient_config(transport: str = "websockets", **kwargs: Any) -> Any:
    """A ClientConfig for ``transport``, or Unavailable when this wsclient does not have it."""
    from pydantic import ValidationError

    from wsclient import ClientConfig
    from wsclient.transport import get_connector

    try:
        config = ClientConfig(transport=transport, **kwargs)
    except ValidationError:
        raise Unavailable(f"ClientConfig does not accept transport={transport!r} (yet)") from None
    try:
        get_connector(config.transport)
    except (ValueError, ImportError) as exc:
        raise Unavailable(f"transport {transport!r} is not usable: {exc}") from None
    return config


def register(client: Any, handler: Callable[[Any], Any], api: str, handler_kind: str) -> None:
    """Route every frame to ``handler`` (called with the validated model).

    ``api="typed"``: ``client.on(Model, callback)`` for every model (wsclient validates);
    ``api="raw"``: ``client.on_message(callback)`` where the callback validates with the shared
    adapter. ``handler_kind="async"`` makes the callback a coroutine function doing the same work.
    """
    callback: Callable[[Any], Any]
    if api == "typed":
        if not typed_api():
            raise Unavailable("Client.on (typed API) does not exist yet")
        if handler_kind == "async":

            async def callback(msg: Any) -> None:
                handler(msg)

        else:
            callback = handler
        for model in MODELS:
            client.on(model, callback)
        return
    validate = ADAPTER.validate_json
    if handler_kind == "async":

        async def callback(frame: Any) -> None:
            handler(validate(frame))

    else:

        def callback(frame: Any) -> None:
            handler(validate(frame))

    client.on_message(callback)


async def run_wsclient(
    url: str,
    sink: Any,
    *,
    transport: str = "websockets",
    api: str = "typed",
    handler: str = "sync",
    metrics: bool = False,
) -> None:
    from wsclient import Client

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    errors: list[str] = []
    sink.on_done = lambda: finished.done() or finished.set_result(None)
    client = Client(url, config=wsclient_config(transport))
    client.on_error(lambda item, exc: errors.append(repr(exc)))
    if metrics:  # what wsclient.metrics.prometheus attaches: handler time and queue wait per frame
        if not hasattr(Client, "add_metrics"):
            raise Unavailable("Client.add_metrics (wsclient.metrics) does not exist yet")
        from wsclient.metrics import Histograms

        client.add_metrics(Histograms())
    if api == "iter":  # async for msg in client.messages(*models)
        if not hasattr(Client, "messages"):
            raise Unavailable("Client.messages (async iteration) does not exist yet")
        stream = client.messages(*MODELS)
        async with client:
            async for msg in stream:
                sink(msg)
                if finished.done():
                    break
    else:
        register(client, sink, api, handler)
        async with client:
            await finished
    if errors:
        raise RuntimeError(f"{len(errors)} errors in wsclient, first: {errors[0]}")


def run_wsclient_sync(url: str, sink: Any, *, handlers: str = "worker", timeout: float = 60) -> None:
    """``wsclient.sync.Client`` from a plain thread: typed handlers inline on its loop thread
    (``handlers="loop"``) or handed to its worker thread (``"worker"``)."""
    import threading

    try:
        from wsclient.sync import Client
    except ImportError:
        raise Unavailable("wsclient.sync does not exist yet") from None
    finished = threading.Event()
    errors: list[str] = []
    sink.on_done = finished.set
    client = Client(url, config=wsclient_config(), handlers=handlers)  # type: ignore[arg-type]
    client.on_error(lambda item, exc: errors.append(repr(exc)))
    register(client, sink, "typed", "sync")
    with client:
        if not finished.wait(timeout):
            raise TimeoutError(f"the stream did not end within {timeout}s")
    if errors:
        raise RuntimeError(f"{len(errors)} errors in wsclient.sync, first: {errors[0]}")


# ---------------------------------------------------------------------------------------- peers


async def run_websockets(url: str, sink: Any, *, validate: bool = True) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=2**20) as ws:
        recv = ws.recv
        if validate:
            parse = ADAPTER.validate_json
            while not sink.finished:
                sink(parse(await recv()))
        else:
            while not sink.finished:
                sink.raw(await recv())


async def run_aiohttp(url: str, sink: Any) -> None:
    import aiohttp

    text = aiohttp.WSMsgType.TEXT
    parse = ADAPTER.validate_json
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, max_msg_size=2**20, compress=0) as ws,
    ):
        receive = ws.receive
        while not sink.finished:
            msg = await receive()
            if msg.type is not text:
                raise RuntimeError(f"aiohttp: unexpected {msg.type!r} {msg.data!r}")
            sink(parse(msg.data))


async def run_picows(url: str, sink: Any) -> None:
    import picows

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    parse = ADAPTER.validate_json
    text = picows.WSMsgType.TEXT
    sink.on_done = lambda: finished.done() or finished.set_result(None)

    class Listener(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == text:
                sink(parse(frame.get_payload_as_utf8_text()))
            elif frame.msg_type == picows.WSMsgType.CLOSE and not finished.done():
                finished.set_exception(RuntimeError("picows: closed by the server"))

    transport, _ = await picows.ws_connect(Listener, url, max_frame_size=2**20)
    try:
        await finished
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()


def run_websocket_client(url: str, sink: Any, *, skip_utf8: bool = False, timeout: float = 60) -> None:
    import websocket  # websocket-client

    ws = websocket.create_connection(url, skip_utf8_validation=skip_utf8, timeout=timeout)
    try:
        recv = ws.recv
        parse = ADAPTER.validate_json
        while not sink.finished:
            sink(parse(recv()))
    finally:
        ws.close(timeout=2)


class CountSink:
    """The bare ``websockets`` recv loop's work: count frames; the last one is the end marker."""

    __slots__ = ("count", "finished", "on_done", "t_first", "t_last", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.t_first = self.t_last = 0.0
        self.finished = False
        self.on_done: Callable[[], object] | None = None

    def raw(self, frame: str | bytes) -> None:
        self.count += 1
        if self.count == 1:
            self.t_first = time.perf_counter()
        if self.count == self.total:
            self.t_last = time.perf_counter()
            self.finished = True
            if not str(frame).startswith('{"type":"end"'):
                raise RuntimeError(f"frame {self.total} is not the end marker: {frame!r:.60}")


@dataclass(frozen=True)
class Variant:
    label: str
    run: Callable[..., Any]  # (url, sink) -> awaitable or None
    kwargs: dict[str, Any]
    is_async: bool = True


#: Throughput and latency variants, by key (the orchestrator keeps the order and the labels).
VARIANTS: dict[str, Variant] = {
    "websockets-bare": Variant("websockets recv loop (no validation)", run_websockets, {"validate": False}),
    "baseline": Variant("websockets + validate_json (baseline)", run_websockets, {}),
    "wsclient-typed-sync": Variant("wsclient typed dispatch, sync handler", run_wsclient, {}),
    "wsclient-typed-async": Variant(
        "wsclient typed dispatch, async handler", run_wsclient, {"handler": "async"}
    ),
    "wsclient-typed-sync-metrics": Variant(
        "wsclient typed, sync handler, metrics recorder attached", run_wsclient, {"metrics": True}
    ),
    "wsclient-typed-async-metrics": Variant(
        "wsclient typed, async handler, metrics recorder attached",
        run_wsclient,
        {"handler": "async", "metrics": True},
    ),
    "wsclient-typed-iter": Variant(
        "wsclient typed, async for msg in client.messages(...)", run_wsclient, {"api": "iter"}
    ),
    "wsclient-raw-sync": Variant("wsclient raw+validate, sync handler", run_wsclient, {"api": "raw"}),
    "wsclient-raw-async": Variant(
        "wsclient raw+validate, async handler", run_wsclient, {"api": "raw", "handler": "async"}
    ),
    "wsclient-picows-typed-sync": Variant(
        'wsclient transport="picows", typed, sync handler', run_wsclient, {"transport": "picows"}
    ),
    "wsclient-sync-loop": Variant(
        'wsclient.sync, typed, handlers="loop"', run_wsclient_sync, {"handlers": "loop"}, False
    ),
    "wsclient-sync-worker": Variant(
        'wsclient.sync, typed, handlers="worker"', run_wsclient_sync, {"handlers": "worker"}, False
    ),
    "aiohttp": Variant("aiohttp + validate_json", run_aiohttp, {}),
    "picows": Variant("picows + validate_json", run_picows, {}),
    "websocket-client": Variant("websocket-client + validate_json", run_websocket_client, {}, False),
    "websocket-client-noutf8": Variant(
        "websocket-client (skip_utf8_validation) + validate_json",
        run_websocket_client,
        {"skip_utf8": True},
        False,
    ),
}


def _flag_finished(sink: Any) -> None:
    """Make ``sink.finished`` flip (and ``on_done`` fire) when the end marker is handled."""
    done = sink.done

    def finish() -> None:
        sink.finished = True
        if sink.on_done is not None:
            sink.on_done()
        done()

    sink.done = finish


class _Sink(Sink):
    __slots__ = ("finished", "on_done")


class _LatencySink(LatencySink):
    __slots__ = ("finished", "on_done")


def _drive(variant: Variant, url: str, sink: Any, timeout: float) -> None:
    if variant.is_async:

        async def bounded() -> None:
            async with asyncio.timeout(timeout):
                await variant.run(url, sink, **variant.kwargs)

        asyncio.run(bounded())
    else:
        variant.run(url, sink, timeout=timeout, **variant.kwargs)


def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    variant = VARIANTS[spec["variant"]]
    n = int(spec["n"])
    total = n + 1  # the stream and its end marker
    sink: Any
    if spec["variant"] == "websockets-bare":
        sink = CountSink(total)
    else:
        sink = _Sink(lambda: None)
        sink.finished = False
        sink.on_done = None
        _flag_finished(sink)
    if variant.run is run_wsclient:
        wsclient_config(variant.kwargs.get("transport", "websockets"))  # Unavailable before any work
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    profiled(spec.get("profile"), lambda: _drive(variant, spec["url"], sink, spec["timeout"]))
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    if sink.count != total:
        raise RuntimeError(f"received {sink.count} messages, expected {total}")
    elapsed = sink.t_last - sink.t_first
    rate = (total - 1) / elapsed
    return {
        "rate": rate,
        "us_per_msg": 1e6 / rate,
        "elapsed": elapsed,
        "count": sink.count,
        "cpu_s": cpu,
        "wall_s": wall,
    }


#: Where the latency CDF is sampled: every 0.5 % up to p99.5, then finer into the tail.
CDF_QUANTILES = (
    [i / 1000 for i in range(0, 995, 5)]
    + [i / 1000 for i in range(995, 999)]
    + [0.999 + j / 10000 for j in range(10)]
    + [1.0]
)


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[i])


def latency(spec: dict[str, Any]) -> dict[str, Any]:
    variant = VARIANTS[spec["variant"]]
    sink: Any = _LatencySink(lambda: None)
    sink.finished = False
    sink.on_done = None
    _flag_finished(sink)
    if variant.run is run_wsclient:
        wsclient_config(variant.kwargs.get("transport", "websockets"))
    profiled(spec.get("profile"), lambda: _drive(variant, spec["url"], sink, spec["timeout"]))
    skip = int(spec["rate"] * spec["warmup"])
    samples = sorted(sink.samples[skip:])
    expected = int(spec["rate"] * spec["seconds"])
    if len(sink.samples) != expected:
        raise RuntimeError(f"received {len(sink.samples)} stamped messages, expected {expected}")
    us = 1e-3
    qs = CDF_QUANTILES
    return {
        "samples": len(samples),
        "p50_us": _percentile(samples, 0.5) * us,
        "p90_us": _percentile(samples, 0.9) * us,
        "p99_us": _percentile(samples, 0.99) * us,
        "p999_us": _percentile(samples, 0.999) * us,
        "max_us": samples[-1] * us,
        "cdf": [[round(_percentile(samples, q) * us, 1), q] for q in qs],
    }


# ---------------------------------------------------------------------------------------- dead link


class Recorder:
    """Times of the events of one dead-link run (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.t_cut: float | None = None
        self.t_ready: float | None = None
        self.t_dead: float | None = None
        self.t_first_new: float | None = None
        self.first = asyncio.Event()
        self.recovered = asyncio.Event()
        self.stop = asyncio.Event()
        self.reconnects: list[tuple[float, float]] = []  # (when announced, delay)
        self.messages = 0

    def message(self, msg: Any) -> None:
        self.messages += 1
        if msg.seq == 0 and msg.__class__ is not End:  # the first message of a connection
            if self.t_cut is None:
                self.first.set()
            elif self.t_first_new is None:
                self.t_first_new = time.monotonic()
                self.recovered.set()

    def dead(self) -> None:
        if self.t_cut is not None and self.t_dead is None:
            self.t_dead = time.monotonic()


async def dl_wsclient(url: str, rec: Recorder, transport: str = "websockets") -> None:
    from wsclient import Client, Disconnected, Heartbeat, HeartbeatMissed, Reconnect, Reconnecting

    config = wsclient_config(
        transport,
        heartbeat=Heartbeat(interval=HB_INTERVAL, timeout=HB_TIMEOUT),
        reconnect=Reconnect(initial_delay=FIRST_DELAY, jitter=0.0),
    )
    client = Client(url, config=config)
    register(client, rec.message, "typed" if typed_api() else "raw", "sync")

    def on_event(event: Any) -> None:
        if isinstance(event, Disconnected) or (isinstance(event, HeartbeatMissed) and event.fatal):
            rec.dead()
        elif isinstance(event, Reconnecting) and rec.t_cut is not None:
            rec.reconnects.append((time.monotonic(), event.delay))

    client.on_event(on_event)
    client.subscribe(json.loads(SUBSCRIBE))
    async with client:
        await rec.stop.wait()


async def dl_websockets(url: str, rec: Recorder) -> None:
    """``websockets``' own reconnect loop and keepalive (close_timeout left at its default)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    parse = ADAPTER.validate_json
    async for ws in connect(url, ping_interval=HB_INTERVAL, ping_timeout=HB_TIMEOUT, compression=None):
        try:
            await ws.send(SUBSCRIBE)
            async for frame in ws:
                rec.message(parse(frame))
        except ConnectionClosed:
            pass
        rec.dead()


async def dl_aiohttp(url: str, rec: Recorder) -> None:
    """aiohttp's heartbeat (ping after I idle seconds, pong within I/2) and receive_timeout=I+T; our loop
    reconnects with the same backoff as wsclient (0.1 s doubling)."""
    import aiohttp

    parse = ADAPTER.validate_json
    text = aiohttp.WSMsgType.TEXT
    delay = FIRST_DELAY
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.ws_connect(
                    url, heartbeat=HB_INTERVAL, receive_timeout=HB_INTERVAL + HB_TIMEOUT, compress=0
                ) as ws:
                    await ws.send_str(SUBSCRIBE)
                    while True:
                        msg = await ws.receive()
                        if msg.type is not text:
                            break
                        rec.message(parse(msg.data))
                        delay = FIRST_DELAY
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            rec.dead()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


DEADLINK_VARIANTS: dict[str, tuple[str, Callable[..., Awaitable[None]], dict[str, Any]]] = {
    "wsclient": ("wsclient (Heartbeat I=1, T=1; Reconnect 0.1 s, no jitter)", dl_wsclient, {}),
    "wsclient-picows": ('wsclient transport="picows" (same settings)', dl_wsclient, {"transport": "picows"}),
    "websockets": (
        "websockets connect() loop, ping_interval=1, ping_timeout=1 (close_timeout=10 default)",
        dl_websockets,
        {},
    ),
    "aiohttp": ("aiohttp heartbeat=1, receive_timeout=2, own 0.1 s backoff loop", dl_aiohttp, {}),
}


class ServerProcess:
    """A benchmark server child process (for the restart scenario: killed and started again)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls, port: int = 0) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.server",
            "--port",
            str(port),
            "--lifetime",
            "600",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                line = await proc.stdout.readline()
            ready = json.loads(line)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return cls(proc, int(ready["port"]))

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self) -> None:
        self.kill()
        await self.proc.wait()


async def _deadlink(spec: dict[str, Any]) -> dict[str, Any]:
    scenario = spec["scenario"]
    _, run, kwargs = DEADLINK_VARIANTS[spec["variant"]]
    if "transport" in kwargs:
        wsclient_config(kwargs["transport"])
    rng = random.Random(spec["seed"])
    rate = spec.get("feed_rate", 1000)
    server = await ServerProcess.start()
    proxy: BlackholeProxy | None = None
    if scenario == "blackhole":
        proxy = BlackholeProxy(server.port)
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}/feed?rate={rate}"
    else:
        url = f"ws://127.0.0.1:{server.port}/feed?rate={rate}"
    rec = Recorder()
    task = asyncio.create_task(run(url, rec, **kwargs))
    wait_before = rng.uniform(1.0, 2.0)
    try:
        async with asyncio.timeout(15):
            await rec.first.wait()
        await asyncio.sleep(wait_before)
        rec.t_cut = time.monotonic()
        if proxy is not None:
            proxy.cut()
        else:
            await server.stop()
            server = await ServerProcess.start(server.port)
            rec.t_ready = time.monotonic()
        async with asyncio.timeout(spec["timeout"]):
            await rec.recovered.wait()
    finally:
        rec.stop.set()  # wsclient closes itself on this; the peers' loops are cancelled
        if run is not dl_wsclient:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        if proxy is not None:
            await proxy.close()
        await server.stop()
    if rec.t_dead is None:
        raise RuntimeError("the client never declared the link dead before recovering")
    assert rec.t_cut is not None and rec.t_first_new is not None
    result: dict[str, Any] = {
        "cut_after_s": wait_before,
        "detect_s": rec.t_dead - rec.t_cut,
        "recover_s": rec.t_first_new - rec.t_dead,
        "total_s": rec.t_first_new - rec.t_cut,
        "messages": rec.messages,
    }
    if rec.t_ready is not None:
        result["server_down_s"] = rec.t_ready - rec.t_cut
        result["after_ready_s"] = rec.t_first_new - rec.t_ready
    if rec.reconnects:
        result["first_delay_s"] = rec.reconnects[0][1]
        attempts = [t + d for t, d in rec.reconnects if t + d <= rec.t_first_new]
        if attempts:
            # From the start of the connect attempt that succeeded to the first message.
            result["attempt_to_first_s"] = rec.t_first_new - max(attempts)
        result["attempts"] = len(rec.reconnects)
    return result


def deadlink(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_deadlink(spec))


# ---------------------------------------------------------------------------------------- idle cost


class _Handle:
    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self.close = close


@functools.cache
def _shared_config(transport: str, compression: bool, interval: float | None) -> Any:
    """One ClientConfig for all the connections of a run, as an application would build it."""
    from wsclient import Heartbeat

    kwargs: dict[str, Any] = {"compression": "deflate" if compression else None}
    if interval is not None:
        kwargs["heartbeat"] = Heartbeat(interval=interval)
    return wsclient_config(transport, **kwargs)


async def open_wsclient(
    url: str, compression: bool, interval: float | None, transport: str, api: str
) -> _Handle:
    from wsclient import Client

    client = Client(url, config=_shared_config(transport, compression, interval))
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def got(_: Any) -> None:
        if not first.done():
            first.set_result(None)

    if api == "typed":
        if not typed_api():
            raise Unavailable("Client.on (typed API) does not exist yet")
        for model in MODELS[:3]:
            client.on(model, got)
    else:
        client.on_message(got)
    await client.start()
    await first
    return _Handle(client.close)


async def open_websockets(url: str, compression: bool, interval: float | None) -> _Handle:
    from websockets.asyncio.client import connect

    ws = await connect(
        url, compression="deflate" if compression else None, ping_interval=interval or 20.0, max_size=2**20
    )
    await ws.recv()

    async def read() -> None:  # what an application does with a connection: read it
        async for _ in ws:
            pass

    task = asyncio.create_task(read())

    async def close() -> None:
        await ws.close()
        task.cancel()

    return _Handle(close)


IDLE_VARIANTS: dict[str, tuple[str, Callable[..., Awaitable[_Handle]], dict[str, Any]]] = {
    "wsclient": ("wsclient (on_message)", open_wsclient, {"transport": "websockets", "api": "raw"}),
    "wsclient-typed": (
        "wsclient (typed routing, 3 models)",
        open_wsclient,
        {"transport": "websockets", "api": "typed"},
    ),
    "wsclient-picows": (
        'wsclient transport="picows" (on_message)',
        open_wsclient,
        {"transport": "picows", "api": "raw"},
    ),
    "websockets": ("websockets connect() + a recv task", open_websockets, {}),
}


def _short(filename: str) -> str:
    """``…/site-packages/websockets/x.py`` → ``websockets/x.py``; stdlib → ``asyncio/x.py``."""
    for marker in ("site-packages/", "/src/", f"/python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def write_trace(path: str, snapshot: tracemalloc.Snapshot, conns: int) -> None:
    """Where the memory of ``conns`` connections went: by file, then by allocating line."""
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    with open(path, "w") as f:
        f.write(f"tracemalloc: Python allocations still alive after opening {conns} connections\n")
        f.write("(native buffers such as zlib state and socket buffers are not seen here)\n\n")
        by_file = snapshot.statistics("filename")
        total = sum(s.size for s in by_file)
        f.write(f"total {total / conns / 1024:.2f} KiB per connection\n\nby file, per connection:\n")
        for stat in by_file[:15]:
            name = _short(stat.traceback[0].filename)
            f.write(f"  {stat.size / conns:9.0f} B  {stat.count / conns:6.1f} blocks  {name}\n")
        f.write("\nby allocating line, per connection:\n")
        for stat in snapshot.statistics("lineno")[:25]:
            frame = stat.traceback[0]
            name = _short(frame.filename)
            f.write(f"  {stat.size / conns:9.0f} B  {name}:{frame.lineno}\n")


async def _idle(spec: dict[str, Any]) -> dict[str, Any]:
    _, opener, kwargs = IDLE_VARIANTS[spec["variant"]]
    compression = bool(spec.get("compression"))
    interval = spec.get("interval")
    if "transport" in kwargs:
        if compression and kwargs["transport"] == "picows":
            raise Unavailable("the picows transport has no permessage-deflate")
        wsclient_config(kwargs["transport"], compression="deflate" if compression else None)
    url = spec["url"]
    handles: list[_Handle] = []

    async def open_many(count: int) -> None:
        batch = 50
        async with asyncio.timeout(spec["timeout"]):
            for start in range(0, count, batch):
                size = min(batch, count - start)
                handles.extend(
                    await asyncio.gather(*(opener(url, compression, interval, **kwargs) for _ in range(size)))
                )

    result: dict[str, Any] = {}
    try:
        await open_many(spec["warm"])
        gc.collect()
        await asyncio.sleep(0.3)
        rss0 = rss_bytes()
        if spec.get("trace"):
            tracemalloc.start(12)
        t0 = time.perf_counter()
        await open_many(spec["conns"])
        result["open_s"] = time.perf_counter() - t0
        gc.collect()
        await asyncio.sleep(0.5)
        rss1 = rss_bytes()
        if spec.get("trace"):
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            write_trace(spec["trace"], snapshot, spec["conns"])
        result.update(
            rss_before=rss0,
            rss_after=rss1,
            per_conn_kib=(rss1 - rss0) / spec["conns"] / 1024,
            connections=len(handles),
        )
        window = spec.get("cpu_window")
        if window:
            await asyncio.sleep(1.0)  # let the pings spread out
            c0, w0 = cpu_seconds(), time.perf_counter()
            await asyncio.sleep(window)
            cpu, wall = cpu_seconds() - c0, time.perf_counter() - w0
            result.update(cpu_s=cpu, window_s=wall, cpu_pct=100 * cpu / wall)
    finally:
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)
        except TimeoutError:
            result["close_timed_out"] = True
    return result


def idle(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_idle(spec))


# ---------------------------------------------------------------------------------------- entry


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """What this checkout of wsclient offers: the typed API, the picows transport."""
    features: dict[str, Any] = {"typed": typed_api()}
    try:
        wsclient_config("picows")
        features["picows_transport"] = True
    except Unavailable as exc:
        features["picows_transport"] = False
        features["picows_reason"] = str(exc)
    return features


MEASURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "probe": probe,
    "throughput": throughput,
    "latency": latency,
    "deadlink": deadlink,
    "idle": idle,
    "pool_throughput": pool.pool_throughput,
    "resubscribe": pool.resubscribe,
    "dedup_memory": pool.dedup_memory,
    "bus_throughput": bus.bus_throughput,
    "bus_latency": bus.bus_latency,
    "bus_consumer": bus.bus_consumer,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    raise_nofile()
    try:
        result = MEASURES[spec["measure"]](spec)
        result["ok"] = True
    except (Unavailable, bus.Skipped) as exc:
        result = {"ok": False, "skipped": str(exc)}
    except BaseException as exc:
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
