"""The benchmark's WebSocket server, run in its own process: ``python -m benchmarks.server``.

Built so that it cannot be the bottleneck: the throughput stream is pre-encoded at start-up (frame
headers and payloads concatenated into 256 KiB blocks of whole frames) and written block by block
with ``StreamWriter.write`` after a minimal RFC 6455 handshake; no WebSocket library is involved.
Client frames (pings, close, subscribe) are parsed just enough to answer them.

Paths (the query string sets parameters):

* ``/stream``: the pre-encoded stream of ``--n`` frames and the end marker, at once.
* ``/paced?rate=20000&seconds=5``: frames stamped with ``time.monotonic_ns()`` at write time, written
  in small batches every ~1 ms at a steady rate, then the end marker.
* ``/feed?rate=1000``: after the first text frame from the client (a subscribe), a ticker with
  ``seq`` 0 at once, then stamped frames at ``rate`` until the connection ends.
* ``/idle``: one welcome frame (compressed if permessage-deflate was negotiated), then silence.
* ``/trades?streams=100&per_stream=4000&run=TAG``: a venue-like trade feed for the pool benchmark.
  Each connection sends Binance-style ``{"method":"SUBSCRIBE","params":[...],"id":n}`` messages
  (answered ``{"result":null,"id":n}``); once the connections of run ``TAG`` together subscribed to all
  ``streams`` streams, each gets ``per_stream`` trades of every stream it subscribed to, ids contiguous
  from 1, the streams interleaved, pre-encoded and written in 256 KiB blocks at once, all connections
  at the same moment. The frames are encoded at the first request of a given size and kept.
* ``/bus-paced?streams=10&rate=5000&seconds=5``: venue trades for the bus latency measure
  (benchmarks/bus.py), ``rate`` per second over ``streams`` streams (ids contiguous from 1), written in
  small batches every ~1 ms, each batch stamped just before its write with ``time.time_ns()`` in the
  ``w`` field (wall clock: the consumer that reads it is another process); no end marker, the
  connection stays open until the client closes it.

stdout carries JSON lines: ``{"event": "ready", "port": ...}`` once listening, and for ``/stream``
and ``/paced`` connections (and ``/trades``, with its ``run``)
``{"event": "conn", "cpu_s": ..., "wall_s": ..., ...}`` with this
process's CPU time (``resource.getrusage``) over the connection's life. The process exits when its
stdin closes (the parent died or is done) or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import sys
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

from benchmarks import feed

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def negotiate_deflate(offer_header: str) -> tuple[str, int] | None:
    """Accept the client's first permessage-deflate offer: (response header value, window bits)."""
    for offer in offer_header.split(","):
        parts = [p.strip() for p in offer.split(";")]
        if parts[0] != "permessage-deflate":
            continue
        params = []
        server_bits = 15
        for p in parts[1:]:
            name, _, value = p.partition("=")
            name, value = name.strip(), value.strip().strip('"')
            if name == "client_max_window_bits" and not value:
                continue  # a bare offer: the server may omit it
            if name == "server_max_window_bits" and value:
                server_bits = int(value)
            params.append(p)
        return "; ".join(["permessage-deflate", *params]), server_bits
    return None


class Server:
    def __init__(self, n: int, seed: int) -> None:
        t0 = time.perf_counter()
        self.chunks, self.avg_payload = feed.stream_chunks(n, seed) if n else ([], 0.0)
        self.n = n
        self.pool = feed.templates(4096, seed + 1)
        self.first = feed.first_template(seed + 2)
        self.build_s = time.perf_counter() - t0
        self.connections = 0
        self.trade_frames: dict[tuple[int, int], dict[str, list[bytes]]] = {}
        self.trade_runs: dict[str, TradeRun] = {}

    def trade_run(self, tag: str, streams: int, per_stream: int) -> TradeRun:
        run = self.trade_runs.get(tag)
        if run is None:
            key = (streams, per_stream)
            frames = self.trade_frames.get(key)
            if frames is None:
                self.trade_frames.clear()  # one size at a time: 400k frames are ~80 MB
                frames = self.trade_frames[key] = feed.trade_frames(feed.trade_streams(streams), per_stream)
            run = self.trade_runs[tag] = TradeRun(tag, frames, per_stream)
        return run

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = Conn(self, reader, writer)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.connections -= 1
            writer.transport.abort()


class TradeRun:
    """The connections of one ``/trades`` run: they start together once all streams are subscribed."""

    def __init__(self, tag: str, frames: dict[str, list[bytes]], per_stream: int) -> None:
        self.tag = tag
        self.frames = frames
        self.per_stream = per_stream
        self.conns: list[Conn] = []
        self.subscribed: set[str] = set()
        self.go = asyncio.Event()

    def subscribe(self, conn: Conn, streams: list[str]) -> None:
        known = [s for s in streams if s in self.frames and s not in conn.trade_streams]
        conn.trade_streams.extend(known)
        self.subscribed.update(known)
        if len(self.subscribed) == len(self.frames) and not self.go.is_set():
            # Every connection's blocks are built before any is written: they start together.
            for c in self.conns:
                c.blocks = self.blocks(c.trade_streams)
            self.go.set()

    def blocks(self, streams: list[str]) -> list[bytes]:
        """``streams`` interleaved (trade 1 of each, then trade 2 of each, …), in 256 KiB blocks."""
        columns = [self.frames[s] for s in streams]
        blocks: list[bytes] = []
        buf: list[bytes] = []
        size = 0
        for t in range(self.per_stream):
            for column in columns:
                data = column[t]
                buf.append(data)
                size += len(data)
            if size >= 256 * 1024:
                blocks.append(b"".join(buf))
                buf.clear()
                size = 0
        if buf:
            blocks.append(b"".join(buf))
        return blocks


class Conn:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.subscribed = asyncio.Event()
        self.closed = False
        self.deflate_bits: int | None = None
        self.sent = 0
        self.trade_run: TradeRun | None = None
        self.trade_streams: list[str] = []
        self.blocks: list[bytes] = []

    async def handshake(self) -> tuple[str, dict[str, list[str]]] | None:
        async with asyncio.timeout(10):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        key = headers.get("sec-websocket-key")
        if method != "GET" or key is None:
            self.writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return None
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        response = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        offer = headers.get("sec-websocket-extensions")
        if offer:
            agreed = negotiate_deflate(offer)
            if agreed is not None:
                response.append(f"Sec-WebSocket-Extensions: {agreed[0]}")
                self.deflate_bits = agreed[1]
        self.writer.write(("\r\n".join(response) + "\r\n\r\n").encode())
        parts = urlsplit(target)
        return parts.path, parse_qs(parts.query)

    async def run(self) -> None:
        request = await self.handshake()
        if request is None:
            return
        path, query = request
        t0, cpu0 = time.monotonic(), cpu_seconds()
        if path == "/trades":
            self.trade_run = self.server.trade_run(
                query.get("run", [""])[0],
                int(query.get("streams", ["100"])[0]),
                int(query.get("per_stream", ["1000"])[0]),
            )
            self.trade_run.conns.append(self)
        reading = asyncio.create_task(self.read_loop())
        if path == "/stream":
            mode = self.stream()
        elif path == "/paced":
            mode = self.paced(float(query.get("rate", ["20000"])[0]), float(query.get("seconds", ["5"])[0]))
        elif path == "/feed":
            mode = self.feed(float(query.get("rate", ["1000"])[0]))
        elif path == "/trades":
            mode = self.trades()
        elif path == "/bus-paced":
            mode = self.bus_paced(
                int(query.get("streams", ["10"])[0]),
                float(query.get("rate", ["5000"])[0]),
                float(query.get("seconds", ["5"])[0]),
            )
        else:
            mode = self.idle()
        writing = asyncio.create_task(mode)
        try:
            await asyncio.wait({reading, writing}, return_when=asyncio.FIRST_COMPLETED)
            if writing.done() and not reading.done():
                # The stream is written: wait for the client's close (bounded).
                await asyncio.wait({reading}, timeout=600)
        finally:
            for task in (reading, writing):
                task.cancel()
            await asyncio.gather(reading, writing, return_exceptions=True)
        if path in ("/stream", "/paced", "/trades", "/bus-paced"):
            wall = time.monotonic() - t0
            cpu = cpu_seconds() - cpu0
            line: dict[str, object] = {"event": "conn", "path": path, "cpu_s": cpu, "wall_s": wall}
            line["bytes"] = self.sent
            run = self.trade_run
            if run is not None:
                line["run"] = run.tag
                run.conns.remove(self)
                if not run.conns:
                    self.server.trade_runs.pop(run.tag, None)
            emit(line)

    # -------------------------------------------------------------- client → server

    async def read_loop(self) -> None:
        reader = self.reader
        inflater = None
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                opcode = b0 & 0x0F
                length = b1 & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                mask = await reader.readexactly(4) if b1 & 0x80 else b""
                data = await reader.readexactly(length)
                if mask:
                    data = unmask(data, mask)
                if opcode == OP_PING:
                    self.write(feed.frame(data, OP_PONG))
                elif opcode == OP_CLOSE:
                    if not self.closed:
                        self.closed = True
                        self.write(feed.frame(data[:2] or b"\x03\xe8", OP_CLOSE))
                        await self.writer.drain()
                    return
                elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    if b0 & 0x40 and self.deflate_bits is not None:
                        inflater = inflater or zlib.decompressobj(-15)
                        data = inflater.decompress(data + b"\x00\x00\xff\xff")
                    if self.trade_run is not None:
                        self.trade_request(data)
                    self.subscribed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def trade_request(self, data: bytes) -> None:
        """A ``/trades`` client message: SUBSCRIBE is acknowledged and joins the run."""
        assert self.trade_run is not None
        try:
            request = json.loads(data)
        except ValueError:
            return
        if not isinstance(request, dict) or request.get("method") != "SUBSCRIBE":
            return
        ack = json.dumps({"result": None, "id": request.get("id")}, separators=(",", ":"))
        self.write(feed.frame(ack.encode()))
        params = request.get("params")
        if isinstance(params, list):
            self.trade_run.subscribe(self, [p for p in params if isinstance(p, str)])

    # -------------------------------------------------------------- server → client

    def write(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(data)
            self.sent += len(data)

    async def stream(self) -> None:
        writer = self.writer
        for chunk in self.server.chunks:
            self.write(chunk)
            await writer.drain()

    async def trades(self) -> None:
        assert self.trade_run is not None
        await self.trade_run.go.wait()
        writer = self.writer
        blocks, self.blocks = self.blocks, []
        for block in blocks:
            self.write(block)
            await writer.drain()

    async def paced(self, rate: float, seconds: float) -> None:
        """``rate`` frames per second for ``seconds``, each batch stamped just before its write."""
        pool = self.server.pool
        size = len(pool)
        headers = [feed.frame_header(len(h) + feed.STAMP_WIDTH + len(t)) for h, t in pool]
        total = int(rate * seconds)
        sent = 0
        start = time.monotonic()
        writer = self.writer
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            if due > sent:
                ts = feed.stamp()
                parts = []
                for i in range(sent, due):
                    j = i % size
                    head, tail = pool[j]
                    parts += (headers[j], head, ts, tail)
                self.write(b"".join(parts))
                sent = due
                await writer.drain()
            await asyncio.sleep(0.001)
        self.write(feed.frame(feed.end_payload(total)))
        await writer.drain()

    async def bus_paced(self, streams: int, rate: float, seconds: float) -> None:
        """``rate`` trades per second for ``seconds`` over ``streams`` streams, each batch stamped with
        ``time.time_ns()`` (field ``w``) just before its write; then silence until the client closes."""
        names = feed.trade_streams(streams)
        heads = [f'{{"e":"trade","s":"{name}","t":' for name in names]
        total = int(rate * seconds)
        sent = 0
        start = time.monotonic()
        writer = self.writer
        frame = feed.frame
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            if due > sent:
                ns = time.time_ns()
                tail = f',"E":{ns // 1_000_000},"w":{ns}}}'
                parts = []
                for i in range(sent, due):
                    t, j = divmod(i, streams)
                    price = 20_000 + (i % 977)
                    payload = f'{heads[j]}{t + 1},"p":"{price}.12500000","q":"0.{i % 9973:05d}000"{tail}'
                    parts.append(frame(payload.encode()))
                self.write(b"".join(parts))
                sent = due
                await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.Event().wait()  # the client closes the connection

    async def feed(self, rate: float) -> None:
        await self.subscribed.wait()
        head, tail = self.server.first
        self.write(feed.frame(head + feed.stamp() + tail))
        pool = self.server.pool
        size = len(pool)
        sent = 0
        start = time.monotonic()
        while not self.writer.transport.is_closing():
            due = int((time.monotonic() - start) * rate) + 1
            if due > sent:
                ts = feed.stamp()
                parts = []
                for i in range(sent, due):
                    head, tail = pool[i % size]
                    parts.append(feed.frame(head + ts + tail))
                self.write(b"".join(parts))
                sent = due
            await asyncio.sleep(0.001)

    async def idle(self) -> None:
        head, tail = self.server.first
        payload = head + feed.stamp() + tail
        if self.deflate_bits is not None:
            deflater = zlib.compressobj(wbits=-self.deflate_bits)
            data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
            self.write(feed.frame_header(len(data) - 4, rsv1=True) + data[:-4])
        else:
            self.write(feed.frame(payload))


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def exit_when_stdin_closes() -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


async def main_async(args: argparse.Namespace) -> None:
    server = Server(args.n, args.seed)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", args.port, backlog=4096, reuse_address=True)
    port = srv.sockets[0].getsockname()[1]
    emit(
        {
            "event": "ready",
            "port": port,
            "pid": os.getpid(),
            "n": server.n,
            "build_s": server.build_s,
            "avg_payload": server.avg_payload,
        }
    )
    async with srv:
        await asyncio.sleep(args.lifetime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n", type=int, default=0, help="frames in the /stream stream (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lifetime", type=float, default=3 * 3600, help="exit after this many seconds")
    args = parser.parse_args()
    raise_nofile()
    if not sys.stdin.isatty():
        exit_when_stdin_closes()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
