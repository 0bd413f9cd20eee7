"""Throughput of the transport backends' receive path (not a test).

Run with ``python benchmarks/bench_transport.py [frames] [rounds]`` (defaults: 200000, 5). A server
in a separate process (so that it does not share the client's core) accepts a ``websockets``
handshake, waits for ``go``, then writes ``frames`` pre-encoded ~160-byte text frames in one burst.
For each backend the client times, best of ``rounds``, from ``go`` to the last frame:

* ``pump``: ``Transport.pump`` with a sink that only counts (the backend alone);
* ``client``: a whole :class:`~wsclient.Client` with one ``on_message`` callback that counts
  (pump → inbound queue → dispatcher task), heartbeat off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
import time

from wsclient.transport import ConnectOptions, Connector

FRAME = {
    "type": "trade",
    "symbol": "BTC-USD",
    "price": "65123.45",
    "size": "0.01230000",
    "side": "buy",
    "seq": 0,
    "ts": 1700000000000000,
    "venue": "bench",
}


def encode_frames(count: int) -> tuple[bytes, int]:
    """``count`` unmasked server text frames, concatenated; and the average payload size."""
    parts: list[bytes] = []
    total = 0
    for seq in range(count):
        payload = json.dumps({**FRAME, "seq": seq}, separators=(",", ":")).ljust(160).encode()
        header = (
            bytes([0x81, len(payload)])
            if len(payload) < 126
            else struct.pack("!BBH", 0x81, 126, len(payload))
        )
        parts.append(header + payload)
        total += len(payload)
    return b"".join(parts), total // count


async def serve_frames(count: int) -> None:
    """The server process: print the port, then answer every ``go`` with the burst."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    blob, _ = encode_frames(count)

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client aborts after each round
            async for message in ws:
                if message == "go":
                    ws.transport.write(blob)  # pre-encoded: the server costs next to nothing

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def time_pump(connect: Connector, url: str, count: int) -> float:

    transport = await connect(ConnectOptions(url=url, max_size=None))
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    received = 0

    def sink(data: str | bytes) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set_result(None)

    pump = asyncio.create_task(transport.pump(sink))
    started = time.perf_counter()
    await transport.send("go")
    await done
    elapsed = time.perf_counter() - started
    transport.abort()
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
    return elapsed


async def time_client(backend: str, url: str, count: int) -> float:
    from wsclient import Client, ClientConfig, Heartbeat

    config = ClientConfig(transport=backend, heartbeat=Heartbeat(mode="off"), inbound_queue=100_000)
    client = Client(url, config=config)
    done = asyncio.get_running_loop().create_future()
    received = 0

    def count_frame(data: str | bytes) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set_result(None)

    client.on_message(count_frame)
    async with client:
        await client.wait_open(5)
        started = time.perf_counter()
        await client.send("go")
        await done
        elapsed = time.perf_counter() - started
    return elapsed


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    from wsclient.transport import get_connector

    _, size = encode_frames(10)
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(count), stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    url = f"ws://127.0.0.1:{int(await server.stdout.readline())}/"
    backends = ("websockets", "picows")
    print(f"{count} text frames of {size} bytes, best of {rounds} rounds, Python {sys.version.split()[0]}")
    try:
        for mode in ("pump", "client"):
            best = dict.fromkeys(backends, float("inf"))
            for _ in range(rounds):
                for backend in backends:  # interleaved, so that machine noise hits both alike
                    if mode == "pump":
                        elapsed = await time_pump(get_connector(backend), url, count)
                    else:
                        elapsed = await time_client(backend, url, count)
                    best[backend] = min(best[backend], elapsed)
            for backend in backends:
                rate = count / best[backend]
                print(f"{mode:<6} {backend:<10} {rate / 1000:7.0f}k msgs/s  {1e6 / rate:5.2f} µs/msg")
    finally:
        server.kill()
        await server.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve_frames(int(sys.argv[2])))
    else:
        asyncio.run(main())
