"""A TCP proxy on 127.0.0.1 that can black-hole its connections, for the dead-link measure.

``cut()`` makes every connection open at that moment a black hole: nothing is forwarded in either
direction any more and no FIN or RST is sent (what a NAT or load balancer that forgot the flow does),
while the bytes that keep arriving are read and dropped. Connections accepted after the cut are
forwarded normally: the path is back for whoever reconnects.
"""

from __future__ import annotations

import asyncio

__all__ = ["BlackholeProxy"]


class _Link:
    __slots__ = ("down", "holed", "up")

    def __init__(self, down: asyncio.StreamWriter, up: asyncio.StreamWriter) -> None:
        self.down = down
        self.up = up
        self.holed = False


class BlackholeProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> int:
        """Black-hole every open connection; return how many."""
        for link in self._links:
            link.holed = True
        return len(self._links)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.down.transport.abort()
            link.up.transport.abort()
        self._links.clear()

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            down_w.transport.abort()
            return
        self.connections += 1
        link = _Link(down_w, up_w)
        self._links.add(link)
        await asyncio.gather(
            self._pipe(down_r, up_w, link), self._pipe(up_r, down_w, link), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        try:
            while data := await reader.read(65536):
                if link.holed:
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        if not link.holed:
            writer.close()  # forward the end of the connection (FIN), unless black-holed
