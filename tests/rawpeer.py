"""A WebSocket server written by hand, for the peers a well-behaved library will not play.

:class:`RawServer` accepts TCP connections on 127.0.0.1 and runs a script per connection; the script
drives a :class:`RawPeer`, which does the upgrade and the framing itself, so it can send invalid
UTF-8, announce a 1 GiB frame, answer with a wrong accept key, or echo a client's headers back. The
``raw_server`` fixture (tests/conftest.py) makes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    """A server-to-client frame (unmasked); ``length`` may announce more than ``payload`` holds."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if n < 126:
        header = bytes([first, n])
    elif n < 2**16:
        header = bytes([first, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, 127]) + n.to_bytes(8, "big")
    return header + payload


class RawPeer:
    """One TCP connection accepted by :class:`RawServer`; WebSocket framing done by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, attempt: int) -> None:
        self.reader = reader
        self.writer = writer
        self.attempt = attempt
        self.request = b""
        self.frames: list[tuple[int, bytes]] = []
        self.pongs: list[bytes] = []
        self.close_code: int | None = None
        self.hung_up = False  # set by discard_until_eof() once the client closed the TCP connection
        self.changed = asyncio.Event()

    async def read_request(self) -> bytes:
        self.request = await self.reader.readuntil(b"\r\n\r\n")
        return self.request

    def accept_key(self) -> str:
        for line in self.request.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                digest = hashlib.sha1(value.strip().encode() + _GUID).digest()
                return base64.b64encode(digest).decode()
        raise AssertionError("no Sec-WebSocket-Key in the request")

    async def handshake(self, accept: str | None = None) -> None:
        """Answer the upgrade request with 101 (with the right accept key unless one is given)."""
        if not self.request:
            await self.read_request()
        key = self.accept_key() if accept is None else accept
        self.writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + key.encode() + b"\r\n\r\n"
        )
        await self.writer.drain()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> tuple[bool, int, bytes]:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        mask = await self.reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(await self.reader.readexactly(n)))
        return bool(first & 0x80), first & 0x0F, data

    async def serve(self) -> None:
        """Behave like a plain server until the client closes: record frames, answer pings and close."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                _, opcode, data = await self.read_frame()
                if opcode == PING:
                    self.send(frame(PONG, data))
                elif opcode == PONG:
                    self.pongs.append(data)
                elif opcode == CLOSE:
                    self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    self.send(frame(CLOSE, data[:2]))  # echo, as RFC 6455 asks
                    self.changed.set()
                    return
                else:
                    self.frames.append((opcode, data))
                self.changed.set()

    def stop_reading(self) -> None:
        """Read nothing more: the client's writes pile up in the kernel's buffers, then in its own."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()

    async def discard_until_eof(self) -> None:
        """Answer nothing and close nothing: drop whatever the client sends until it hangs up.

        Sets :attr:`hung_up` (and wakes :meth:`wait_for`) when the client closed or reset the connection.
        """
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.hung_up = True
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


Script = Callable[[RawPeer], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 running ``script(peer)`` for every connection; it counts them."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[RawPeer] = []
        self.accepted_at: list[float] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = RawPeer(reader, writer, len(self.peers) + 1)
        self.peers.append(peer)
        self.accepted_at.append(time.monotonic())
        self.changed.set()
        task = asyncio.get_running_loop().create_task(self._run(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, peer: RawPeer) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await self.script(peer)
        finally:
            peer.writer.close()
            with contextlib.suppress(Exception):
                await peer.writer.wait_closed()

    async def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.peers) < n:
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


MakeRaw = Callable[[Script], Awaitable[RawServer]]
