"""Benchmarks of wsclient against its peers, one command: ``make bench`` (or ``python -m benchmarks.run``).

Method (details in the generated report, benchmarks/results/latest.md):

* a local server in its own process writes pre-encoded frames in large blocks (benchmarks/server.py)
  and reports its own CPU share per connection;
* every run of every variant is a fresh process (benchmarks/clients.py); rounds are interleaved
  (A B C … A B C …) and medians reported, with ratios to the baseline measured in the same round;
* measures: throughput, added latency at a steady 20k msgs/s, dead-link detection and recovery
  (black-holing proxy, server restart), memory and CPU of 1,000 idle connections, and the Pool's
  (benchmarks/pool.py): 100 streams over 4 connections against one bare connection, CPU per message;
  resubscribing 1,000 streams under a 5 msg/s budget against the floor it allows; the de-duplicator's
  memory per stream; and the bus sinks' (benchmarks/bus.py): throughput into NATS JetStream and Redis
  Streams with every message acknowledged, against a bare nats-py / redis-py loop on the same server,
  and the latency from the venue's write to a consumer of the bus.

Flags: ``--quick`` (100k messages, shorter runs, 3 rounds),
``--only throughput,latency,deadlink,idle,pool,bus``, ``--n``, ``--pool-n``, ``--bus-n``, ``--rounds``,
``--note`` (printed in the report, e.g. "machine shared with other jobs"). ``--only bus`` alone writes
bus.json / bus.md instead of latest.json / latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shlex
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MEASURES = ("throughput", "latency", "deadlink", "idle", "pool", "bus")

THROUGHPUT = [
    "websockets-bare",
    "baseline",
    "wsclient-typed-sync",
    "wsclient-typed-async",
    "wsclient-raw-sync",
    "wsclient-raw-async",
    "wsclient-picows-typed-sync",
    "wsclient-sync-loop",
    "wsclient-sync-worker",
    "aiohttp",
    "picows",
    "websocket-client",
    "websocket-client-noutf8",
]
LATENCY = ["baseline", "wsclient-typed-sync", "wsclient-raw-sync", "wsclient-picows-typed-sync", "picows"]
DEADLINK = ["wsclient", "wsclient-picows", "websockets", "aiohttp"]
MEMORY = [
    ("wsclient", False),
    ("websockets", False),
    ("wsclient-typed", False),
    ("wsclient-picows", False),
    ("wsclient", True),
    ("websockets", True),
]
IDLE_CPU = ["wsclient", "websockets"]
POOL_THROUGHPUT = ["bare", "client", "pool-nodedup", "pool"]
POOL_BASELINE = "bare"
#: Bus throughput rows: the sink, the limit the goal is judged against, a leaner core-NATS loop.
BUS_THROUGHPUT = {
    "nats": {
        "wsclient": "wsclient Client → NatsJetStreamSink (window 4096)",
        "bare": "nats-py js.publish_async loop, pre-built (publish_async_max_pending 4096): the limit",
        "bare-core": "nats-py core publish + reply inbox, acks counted, window 4096 (leaner loop)",
    },
    "redis": {
        "wsclient": "wsclient Client → RedisStreamSink (window 4096)",
        "bare": "redis-py XADD MAXLEN ~ in pipelines of 256, pre-built: the limit",
    },
}
BUS_LATENCY = {
    "nats": {
        "wsclient": "wsclient Client → NatsJetStreamSink",
        "bare": "websockets + validate_json → js.publish_async",
    },
    "redis": {
        "wsclient": "wsclient Client → RedisStreamSink",
        "bare": "websockets + validate_json → XADD, pipelined as it comes",
    },
}
LIBRARIES = (
    "wsclient",
    "websockets",
    "pydantic",
    "pydantic-core",
    "aiohttp",
    "picows",
    "websocket-client",
    "matplotlib",
    "pyinstrument",
)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ processes


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


class ServerProc:
    """The long-lived benchmark server (throughput, latency and idle paths)."""

    def __init__(self, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server", "--n", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self.lines.get(timeout=600)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the benchmark server did not start") from None
        self.port = int(ready["port"])
        self.info = ready

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.put(json.loads(line))

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def drain(self) -> None:
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def run_measured(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One client run against this server; its result carries the server's CPU share."""
        result = run_client(spec, timeout)
        stats = self.conn_stats(timeout=10) if result.get("ok") else None
        if stats and stats.get("wall_s"):
            result["server_cpu_pct"] = 100 * stats["cpu_s"] / stats["wall_s"]
        return result

    def run_stats(self, tag: str, conns: int, timeout: float = 10) -> dict[str, Any] | None:
        """The server's CPU share over the ``conns`` connections of ``/trades`` run ``tag`` (they
        overlap: the share over the longest one); lines of other runs are dropped."""
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(lines) < conns:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.get("run") == tag:
                lines.append(line)
        if not lines:
            return None
        return max(lines, key=lambda line: line["wall_s"])

    def conn_stats(self, timeout: float = 10) -> dict[str, Any] | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_client(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One run in a fresh process; returns its RESULT (``ok``, ``skipped`` or ``error``)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.clients", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            if not result.get("ok") and result.get("error"):
                result["stderr"] = proc.stderr[-2000:]
            return result
    return {"ok": False, "error": f"no result (exit {proc.returncode})", "stderr": proc.stderr[-2000:]}


class Table:
    """Runs of each variant of one measure, in order; skips and errors noted."""

    def __init__(self, keys: list[str], labels: dict[str, str]) -> None:
        self.rows: dict[str, dict[str, Any]] = {
            k: {"label": labels.get(k, k), "runs": [], "errors": []} for k in keys
        }

    def active(self) -> list[str]:
        return [k for k, row in self.rows.items() if "skipped" not in row]

    def add(self, key: str, round_no: int, result: dict[str, Any]) -> str:
        row = self.rows[key]
        if result.get("skipped"):
            row["skipped"] = result["skipped"]
            return f"skipped: {result['skipped']}"
        if not result.get("ok"):
            row["errors"].append(
                {"round": round_no, "error": result.get("error"), "stderr": result.get("stderr")}
            )
            return f"ERROR: {result.get('error')}"
        result["round"] = round_no
        row["runs"].append(result)
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return self.rows


# ------------------------------------------------------------------------------------------ measures


def labels_of(kind: str) -> dict[str, str]:
    from benchmarks import clients

    if kind == "deadlink":
        return {k: v[0] for k, v in clients.DEADLINK_VARIANTS.items()}
    if kind == "idle":
        return {k: v[0] for k, v in clients.IDLE_VARIANTS.items()}
    return {k: v.label for k, v in clients.VARIANTS.items()}


def measure_throughput(server: ServerProc, args: argparse.Namespace) -> dict[str, Any]:
    keys = [k for k in THROUGHPUT if not args.variants or k in args.variants or k == "baseline"]
    table = Table(keys, labels_of("throughput"))
    timeout = max(90.0, args.n / 5000)
    base = {"measure": "throughput", "url": server.url("/stream"), "n": args.n, "timeout": timeout}
    server.drain()
    log(f"throughput: warm-up run of the baseline ({args.n:,} messages)")
    run_client({**base, "variant": "baseline"}, timeout + 30)
    server.conn_stats(timeout=10)
    for r in range(1, args.rounds + 1):
        for key in table.active():
            result = server.run_measured({**base, "variant": key}, timeout + 30)
            status = table.add(key, r, result)
            rate = f"{result['rate']:>10,.0f} msg/s" if result.get("ok") else status
            log(f"throughput round {r}/{args.rounds}  {key:<28} {rate}")
            server.drain()
    return {"n": args.n, "server": server.info, "rows": table.as_dict()}


def measure_latency(server: ServerProc, args: argparse.Namespace) -> dict[str, Any]:
    keys = [k for k in LATENCY if not args.variants or k in args.variants or k == "baseline"]
    table = Table(keys, labels_of("latency"))
    rate, seconds, warmup = 20000, args.latency_seconds, 0.5
    base = {
        "measure": "latency",
        "url": server.url(f"/paced?rate={rate}&seconds={seconds}"),
        "rate": rate,
        "seconds": seconds,
        "warmup": warmup,
        "timeout": seconds + 30,
    }
    server.drain()
    for r in range(1, args.rounds + 1):
        for key in table.active():
            result = server.run_measured({**base, "variant": key}, seconds + 60)
            status = table.add(key, r, result)
            figure = (
                f"p50 {result['p50_us']:.0f} µs  p99 {result['p99_us']:.0f} µs  "
                f"p99.9 {result['p999_us']:.0f} µs"
                if result.get("ok")
                else status
            )
            log(f"latency round {r}/{args.rounds}  {key:<28} {figure}")
            server.drain()
    return {"rate": rate, "seconds": seconds, "warmup": warmup, "rows": table.as_dict()}


def measure_deadlink(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import clients

    out: dict[str, Any] = {
        "interval": clients.HB_INTERVAL,
        "timeout": clients.HB_TIMEOUT,
        "first_delay": clients.FIRST_DELAY,
    }
    keys = [k for k in DEADLINK if not args.variants or k in args.variants]
    tables = {s: Table(keys, labels_of("deadlink")) for s in ("blackhole", "restart")}
    for r in range(1, args.rounds + 1):
        for scenario, table in tables.items():
            for key in table.active():
                spec = {"measure": "deadlink", "scenario": scenario, "variant": key, "seed": r, "timeout": 45}
                result = run_client(spec, 120)
                status = table.add(key, r, result)
                figure = (
                    f"dead after {result['detect_s'] * 1000:7.0f} ms, first message after "
                    f"{result['total_s'] * 1000:7.0f} ms"
                    if result.get("ok")
                    else status
                )
                log(f"deadlink round {r}/{args.rounds}  {scenario:<9} {key:<16} {figure}")
    out.update({s: t.as_dict() for s, t in tables.items()})
    return out


def measure_idle(server: ServerProc, args: argparse.Namespace) -> dict[str, Any]:
    url = server.url("/idle")
    conns, window = args.conns, args.cpu_window
    mem_keys = [f"{v}|{'on' if c else 'off'}" for v, c in MEMORY if not args.variants or v in args.variants]
    labels = labels_of("idle")
    mem = Table(mem_keys, {k: labels[k.split("|")[0]] for k in mem_keys})
    cpu = Table(IDLE_CPU, labels)
    base = {"measure": "idle", "url": url, "conns": conns, "warm": 20, "timeout": 120}
    for r in range(1, args.rounds + 1):
        for key in mem.active():
            variant, comp = key.split("|")
            result = run_client({**base, "variant": variant, "compression": comp == "on"}, 200)
            status = mem.add(key, r, result)
            figure = f"{result['per_conn_kib']:6.1f} KiB/connection" if result.get("ok") else status
            log(f"memory round {r}/{args.rounds}  {variant:<16} compression {comp:<3}  {figure}")
    for r in range(1, args.rounds + 1):
        for key in cpu.active():
            spec = {**base, "variant": key, "compression": False, "interval": 1.0, "cpu_window": window}
            result = run_client(spec, 200 + window)
            status = cpu.add(key, r, result)
            figure = f"{result['cpu_pct']:5.1f} % of a core" if result.get("ok") else status
            log(f"idle cpu round {r}/{args.rounds}  {key:<16} {conns} connections, 1 s heartbeat: {figure}")
    return {"conns": conns, "cpu_window": window, "memory": mem.as_dict(), "cpu": cpu.as_dict()}


def measure_pool(server: ServerProc, args: argparse.Namespace) -> dict[str, Any]:
    """The Pool's three measures: throughput and CPU per message, resubscribe time, dedup memory."""
    from benchmarks import pool

    streams = pool.STREAMS
    per_stream = max(1, args.pool_n // streams)
    n = streams * per_stream
    out: dict[str, Any] = {"streams": streams, "per_stream": per_stream, "n": n}

    keys = [k for k in POOL_THROUGHPUT if not args.variants or k in args.variants or k == POOL_BASELINE]
    table = Table(keys, {k: v[0] for k, v in pool.POOL_VARIANTS.items()})
    timeout = max(90.0, n / 5000)

    def spec(key: str, tag: str) -> dict[str, Any]:
        path = f"/trades?streams={streams}&per_stream={per_stream}&run={tag}"
        return {
            "measure": "pool_throughput",
            "variant": key,
            "url": server.url(path),
            "streams": streams,
            "per_stream": per_stream,
            "timeout": timeout,
        }

    server.drain()
    log(f"pool throughput: warm-up run of the baseline ({n:,} messages, {streams} streams)")
    run_client(spec(POOL_BASELINE, "warm-up"), timeout + 60)  # the server encodes the frames here
    server.run_stats("warm-up", 1)
    for r in range(1, args.rounds + 1):
        for key in table.active():
            tag = f"r{r}-{key}"
            result = run_client(spec(key, tag), timeout + 30)
            if result.get("ok"):
                stats = server.run_stats(tag, result.get("connections", 1))
                if stats and stats.get("wall_s"):
                    result["server_cpu_pct"] = 100 * stats["cpu_s"] / stats["wall_s"]
            status = table.add(key, r, result)
            figure = (
                f"{result['rate']:>9,.0f} msg/s  {result['cpu_us_per_msg']:6.2f} µs CPU/msg"
                if result.get("ok")
                else status
            )
            log(f"pool throughput round {r}/{args.rounds}  {key:<14} {figure}")
    out["throughput"] = table.as_dict()

    cases = {f"{c}|{b}": (c, b) for c, b in pool.RESUBSCRIBE_CASES}
    labels = {k: f"{c} streams per connection, batch {b}" for k, (c, b) in cases.items()}
    resub = Table(list(cases), labels)
    for r in range(1, args.rounds + 1):
        for key in resub.active():
            per_conn, batch = cases[key]
            case = {"measure": "resubscribe", "per_connection": per_conn, "batch": batch, "timeout": 30}
            result = run_client(case, 120)
            status = resub.add(key, r, result)
            figure = (
                f"{result['resubscribe_s']:6.3f} s (floor {result['floor']['floor_s']:.3f} s), "
                f"{result['total_violations']} violations"
                if result.get("ok")
                else status
            )
            log(f"pool resubscribe round {r}/{args.rounds}  {key:<9} {figure}")
    out["resubscribe"] = {
        "streams": pool.RESUB_STREAMS,
        "messages_per_second": pool.RESUB_MPS,
        "connects_per_window": pool.RESUB_CONNECTS,
        "connect_window": pool.RESUB_CONNECT_WINDOW,
        "backoff": pool.RESUB_BACKOFF,
        "tolerance": pool.RESUB_TOLERANCE,
        "rows": resub.as_dict(),
    }

    # tracemalloc counts are deterministic: one run.
    mem = run_client({"measure": "dedup_memory", "streams": 10_000, "messages": 20}, 300)
    if mem.get("ok"):
        log(
            f"pool dedup memory: {mem['steady_b']:.0f} B/stream after messages, "
            f"{mem['after_overlap_b']:.0f} B/stream after an overlap"
        )
    else:
        log(f"pool dedup memory: ERROR {mem.get('error')}")
    out["dedup"] = mem
    return out


class Child:
    """A client process that says ``READY`` on stdout before its RESULT line (the bus consumer)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.clients", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=child_env(),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            if line == "READY":
                return True

    def result(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                return {"ok": False, "error": f"no result within {timeout:.0f}s"}
            if line is None:
                return {
                    "ok": False,
                    "error": "exited without a result",
                    "stderr": "".join(self.stderr)[-2000:],
                }
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                if not result.get("ok") and result.get("error"):
                    result["stderr"] = "".join(self.stderr)[-2000:]
                self.proc.wait(timeout=10)
                return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def measure_bus(server: ServerProc, args: argparse.Namespace) -> dict[str, Any]:
    """wsclient's sinks against bare bus clients: throughput with acknowledgements, and latency."""
    from benchmarks import bus

    streams = bus.STREAMS
    per_stream = max(1, args.bus_n // streams)
    n = streams * per_stream
    rate, seconds = bus.LATENCY_RATE, args.latency_seconds
    lat_n = int(rate * seconds)
    out: dict[str, Any] = {
        "n": n,
        "streams": streams,
        "max_pending": bus.MAX_PENDING,
        "pipeline": bus.REDIS_PIPELINE,
        "maxlen": bus.REDIS_MAXLEN,
        "goal": bus.GOAL_RATIO,
        "latency": {"rate": rate, "seconds": seconds, "warmup": bus.LATENCY_WARMUP, "n": lat_n},
    }
    timeout = max(bus.BUS_TIMEOUT, n / 2000)
    for name, make in (("nats", bus.NatsProc), ("redis", bus.RedisProc)):
        try:
            proc = make()
        except (OSError, RuntimeError) as exc:
            log(f"bus {name}: server unavailable: {exc}")
            out[name] = {"unavailable": str(exc)}
            continue
        try:
            common = {"bus": name, "bus_url": proc.url, "bus_pid": proc.pid, "streams": streams}
            section: dict[str, Any] = {"server": proc.version()}
            keys = [k for k in BUS_THROUGHPUT[name] if not args.variants or k in args.variants or k == "bare"]
            table = Table(keys, BUS_THROUGHPUT[name])

            def spec(key: str, tag: str, common: dict[str, Any] = common) -> dict[str, Any]:
                path = f"/trades?streams={streams}&per_stream={per_stream}&run={tag}"
                return {
                    **common,
                    "measure": "bus_throughput",
                    "variant": key,
                    "url": server.url(path),
                    "per_stream": per_stream,
                    "n": n,
                    "timeout": timeout,
                }

            server.drain()
            log(f"bus {name}: warm-up run ({n:,} messages, {streams} streams)")
            # The server encodes the frames at the first request of this size: a wsclient run, unmeasured.
            warm = run_client(spec("wsclient", f"{name}-warm-up"), timeout + 60)
            if warm.get("skipped"):
                table.add("wsclient", 0, warm)
                log(f"bus {name}: wsclient row skipped: {warm['skipped']}")
            server.drain()
            for r in range(1, args.rounds + 1):
                for key in table.active():
                    tag = f"{name}-r{r}-{key}"
                    result = run_client(spec(key, tag), timeout + 30)
                    if result.get("ok") and key == "wsclient":
                        stats = server.run_stats(tag, 1)
                        if stats and stats.get("wall_s"):
                            result["server_cpu_pct"] = 100 * stats["cpu_s"] / stats["wall_s"]
                    status = table.add(key, r, result)
                    figure = (
                        f"{result['rate']:>9,.0f} msg/s  {result['cpu_us_per_msg']:6.2f} µs CPU/msg, "
                        f"bus {result.get('bus_cpu_us_per_msg', 0):5.2f} µs CPU/msg"
                        if result.get("ok")
                        else status
                    )
                    log(f"bus {name} throughput round {r}/{args.rounds}  {key:<10} {figure}")
                    server.drain()
            section["throughput"] = table.as_dict()

            lkeys = [k for k in BUS_LATENCY[name] if not args.variants or k in args.variants or k == "bare"]
            lat = Table(lkeys, BUS_LATENCY[name])
            if "skipped" in table.rows.get("wsclient", {}) and "wsclient" in lat.rows:
                lat.add("wsclient", 0, {"skipped": table.rows["wsclient"]["skipped"]})
            lat_timeout = seconds + 60
            for r in range(1, args.rounds + 1):
                for key in lat.active():
                    consumer = Child(
                        {
                            **common,
                            "measure": "bus_consumer",
                            "n": lat_n,
                            "warmup_n": int(rate * bus.LATENCY_WARMUP),
                            "timeout": lat_timeout,
                        }
                    )
                    try:
                        if not consumer.ready(30):
                            result = consumer.result(5)
                            result = {"ok": False, "error": f"consumer not ready: {result.get('error')}"}
                        else:
                            path = f"/bus-paced?streams={streams}&rate={rate}&seconds={seconds}"
                            pub = run_client(
                                {
                                    **common,
                                    "measure": "bus_latency",
                                    "variant": key,
                                    "url": server.url(path),
                                    "n": lat_n,
                                    "timeout": lat_timeout,
                                },
                                lat_timeout + 30,
                            )
                            if pub.get("ok"):
                                result = consumer.result(30)
                                result["sink"] = pub.get("sink")
                                result["publisher_cpu_us_per_msg"] = pub.get("publisher_cpu_us_per_msg")
                                result["publisher_cpu_share"] = pub.get("publisher_cpu_share")
                            else:
                                result = pub
                    finally:
                        consumer.kill()
                    status = lat.add(key, r, result)
                    figure = (
                        f"p50 {result['p50_us']:7.0f} µs  p99 {result['p99_us']:7.0f} µs  "
                        f"p99.9 {result['p999_us']:7.0f} µs"
                        if result.get("ok")
                        else status
                    )
                    log(f"bus {name} latency round {r}/{args.rounds}  {key:<10} {figure}")
                    server.drain()
            section["latency"] = lat.as_dict()
            out[name] = section
        finally:
            proc.stop()
    return out


PICOWS_TYPED = "wsclient-picows-typed-sync"


def profiles(server: ServerProc, results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, str]]:
    """Profile the hot path of every wsclient row whose goal was missed (one extra run each).

    Profiles and traces left by an earlier run go first: the report names only this run's.
    """
    prefixes = {
        "throughput": ("profile-throughput-",),
        "latency": ("profile-latency-",),
        "pool": ("profile-pool-",),
        "idle": ("memory-trace-",),
        "bus": ("profile-bus-",),
    }
    mine = tuple(p for m in args.only for p in prefixes.get(m, ()))
    for stale in [*RESULTS.glob("profile-*"), *RESULTS.glob("memory-trace-*")]:
        if stale.name.startswith(mine):  # a partial run leaves the other measures' profiles alone
            stale.unlink()
    made: list[dict[str, str]] = []
    goals = report.goals(results)
    missed = {g["id"] for g in goals if g["met"] is False}
    throughput_profiles = (
        ({"throughput_ratio", "wrapper_cost"}, "throughput", None),
        ({"picows_vs_baseline", "picows_vs_bare_picows"}, "throughput [picows transport]", PICOWS_TYPED),
    )
    for goal_ids, goal, variant in throughput_profiles:
        if not missed & goal_ids:
            continue
        key = variant or report.typed_key(results.get("throughput", {}).get("rows", {}))
        path = RESULTS / f"profile-throughput-{key}.txt"
        spec = {
            "measure": "throughput",
            "variant": key,
            "url": server.url("/stream"),
            "n": args.n,
            "timeout": max(90.0, args.n / 2000),
            "profile": str(path),
        }
        log(f"profile: {key} throughput under pyinstrument → {rel(path)}")
        server.drain()
        result = run_client(spec, spec["timeout"] + 30)
        if result.get("ok"):
            made.append({"goal": goal, "path": path.name, "variant": key})
    pool_results = results.get("pool", {})
    if "pool_efficiency" in missed and pool_results.get("per_stream"):
        path = RESULTS / "profile-pool-throughput-pool.txt"
        streams, per_stream = pool_results["streams"], pool_results["per_stream"]
        spec = {
            "measure": "pool_throughput",
            "variant": "pool",
            "url": server.url(f"/trades?streams={streams}&per_stream={per_stream}&run=profile"),
            "streams": streams,
            "per_stream": per_stream,
            "timeout": max(90.0, pool_results["n"] / 2000),
            "profile": str(path),
        }
        log(f"profile: pool throughput under pyinstrument → {rel(path)}")
        server.drain()
        result = run_client(spec, spec["timeout"] + 30)
        if result.get("ok"):
            made.append({"goal": "pool throughput", "path": path.name, "variant": "pool"})
    if "latency_p99" in missed:
        key = report.typed_key(results.get("latency", {}).get("rows", {}))
        path = RESULTS / f"profile-latency-{key}.txt"
        lat = results["latency"]
        spec = {
            "measure": "latency",
            "variant": key,
            "url": server.url(f"/paced?rate={lat['rate']}&seconds={lat['seconds']}"),
            "rate": lat["rate"],
            "seconds": lat["seconds"],
            "warmup": lat["warmup"],
            "timeout": lat["seconds"] + 30,
            "profile": str(path),
        }
        log(f"profile: {key} latency under pyinstrument → {rel(path)}")
        server.drain()
        result = run_client(spec, lat["seconds"] + 60)
        if result.get("ok"):
            made.append({"goal": "latency", "path": path.name, "variant": key})
    bus_results = results.get("bus", {})
    for name in ("nats", "redis"):
        if f"bus_{name}_throughput" not in missed:
            continue
        path = RESULTS / f"profile-bus-{name}-wsclient.txt"
        n, streams = bus_results["n"], bus_results["streams"]
        per_stream = n // streams
        proc_class = {"nats": "NatsProc", "redis": "RedisProc"}[name]
        from benchmarks import bus

        proc = getattr(bus, proc_class)()
        try:
            spec = {
                "measure": "bus_throughput",
                "bus": name,
                "variant": "wsclient",
                "bus_url": proc.url,
                "bus_pid": proc.pid,
                "streams": streams,
                "per_stream": per_stream,
                "n": n,
                "url": server.url(f"/trades?streams={streams}&per_stream={per_stream}&run=profile-{name}"),
                "timeout": max(bus.BUS_TIMEOUT, n / 1000),
                "profile": str(path),
            }
            log(f"profile: wsclient → {name} sink throughput under pyinstrument → {rel(path)}")
            server.drain()
            result = run_client(spec, spec["timeout"] + 30)
        finally:
            proc.stop()
        if result.get("ok"):
            made.append({"goal": f"bus {name} throughput", "path": path.name, "variant": "wsclient"})
    if missed & {"memory_off", "memory_on"}:
        for variant in ("wsclient", "websockets"):
            path = RESULTS / f"memory-trace-{variant}.txt"
            spec = {
                "measure": "idle",
                "variant": variant,
                "url": server.url("/idle"),
                "compression": False,
                "conns": args.conns,
                "warm": 20,
                "timeout": 120,
                "trace": str(path),
            }
            log(f"profile: {variant} memory under tracemalloc → {rel(path)}")
            result = run_client(spec, 300)
            if result.get("ok"):
                made.append({"goal": "memory", "path": path.name, "variant": variant})
    return made


# ------------------------------------------------------------------------------------------ machine


def machine(args: argparse.Namespace) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        commit = head.stdout.strip() + (" (working tree modified)" if dirty.stdout.strip() else "")
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory": mem_total,
        "kernel": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "commit": commit,
        "loadavg_start": os.getloadavg(),
    }


def shown_args(argv: list[str] | None) -> list[str]:
    """The command-line flags for the report, without ``--note`` (printed on its own)."""
    out: list[str] = []
    skip = False
    for arg in sys.argv[1:] if argv is None else argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="100k messages, shorter runs, 3 rounds")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(MEASURES)}")
    parser.add_argument("--variants", default="", help="comma-separated variant keys (the baseline stays)")
    parser.add_argument("--n", type=int, default=None, help="messages per throughput run (1,000,000)")
    parser.add_argument(
        "--pool-n", type=int, default=None, help="messages per pool throughput run (400,000; quick: 100,000)"
    )
    parser.add_argument(
        "--bus-n", type=int, default=None, help="messages per bus throughput run (100,000; quick: 30,000)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measure (5; quick: 3)")
    parser.add_argument("--conns", type=int, default=None, help="idle connections (1000)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. why figures may be noisy")
    parser.add_argument("--out", default=str(RESULTS), help="output directory")
    parser.add_argument("--no-profile", action="store_true", help="skip profiling missed goals")
    args = parser.parse_args(argv)
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.pool_n = args.pool_n or (100_000 if args.quick else 400_000)
    args.bus_n = args.bus_n or (30_000 if args.quick else 100_000)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.conns = args.conns or 1000
    args.latency_seconds = 2.0 if args.quick else 5.0
    args.cpu_window = 3.0 if args.quick else 10.0
    args.only = [m for m in args.only.split(",") if m] or list(MEASURES)
    unknown = set(args.only) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(sorted(unknown))}: choose from {', '.join(MEASURES)}")
    args.variants = [v for v in args.variants.split(",") if v]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global RESULTS
    RESULTS = out
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "benchmarks.run", *shown_args(argv)]),
            "quick": args.quick,
            "rounds": args.rounds,
            "note": args.note,
            "machine": machine(args),
        }
    }
    probe = run_client({"measure": "probe"}, 60)
    results["meta"]["features"] = probe
    log(f"wsclient features: {probe}")
    need_server = set(args.only) & {"throughput", "latency", "idle", "pool", "bus"}
    if "throughput" in args.only:
        log(f"starting the server ({args.n:,} frames pre-encoded)")
    server = ServerProc(args.n if "throughput" in args.only else 0) if need_server else None
    try:
        if "throughput" in args.only and server is not None:
            results["throughput"] = measure_throughput(server, args)
        if "latency" in args.only and server is not None:
            results["latency"] = measure_latency(server, args)
        if "deadlink" in args.only:
            results["deadlink"] = measure_deadlink(args)
        if "idle" in args.only and server is not None:
            results["idle"] = measure_idle(server, args)
        if "pool" in args.only and server is not None:
            results["pool"] = measure_pool(server, args)
        if "bus" in args.only and server is not None:
            results["bus"] = measure_bus(server, args)
        if server is not None and not args.no_profile:
            results["profiles"] = profiles(server, results, args)
    finally:
        if server is not None:
            server.stop()
    results["meta"]["machine"]["loadavg_end"] = os.getloadavg()
    results["meta"]["duration_s"] = time.time() - started
    # A run of the bus measure alone has its own report (bus.md), leaving latest.md's other sections be.
    name = "bus" if args.only == ["bus"] else "latest"
    (out / f"{name}.json").write_text(json.dumps(results, separators=(",", ":")))
    summary = report.write(results, out, name)
    print(summary)
    log(f"report: {rel(out / f'{name}.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
