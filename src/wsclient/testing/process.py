"""A real server binary run by tests: started on a free loopback port, waited for, crashed, restarted.

:class:`ServerProcess` is what :class:`~wsclient.testing.nats.NatsServer` and
:class:`~wsclient.testing.redis.RedisServer` share; each says how to start its binary
(:meth:`ServerProcess._command`) and how to tell it serves (:meth:`ServerProcess._ready`). The data
directory is kept across :meth:`~ServerProcess.kill` and :meth:`~ServerProcess.restart`, so a
restarted server recovers what it stored, as a crashed production server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server binary on 127.0.0.1 (see the module); ``async with`` starts and stops it."""

    name = "server"

    def __init__(self, binary: str, port: int, data_dir: str | None) -> None:
        self.binary = binary
        self.port = port or free_port()
        """The port, kept across restarts."""
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=f"wsclient-{self.name}-")
        """Where the server keeps its data; a temporary directory removed by :meth:`stop` by default."""
        self._proc: asyncio.subprocess.Process | None = None
        self._paused = False
        self.starts = 0
        """How many times the server was started."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    async def _ready(self) -> bool:
        raise NotImplementedError

    def _exit_detail(self) -> str:
        """What to add to the error of a server that exited on start."""
        return ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it serves; ``TimeoutError`` after ``timeout``."""
        if self.running:
            return
        self._proc = await asyncio.create_subprocess_exec(
            *self._command(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            # Its own session: a ^C at the terminal reaches the test runner, which stops it.
            start_new_session=True,
        )
        self._paused = False
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} on start{self._exit_detail()}"
                )
            if await self._ready():
                return
            if loop.time() > deadline:
                await self.kill()
                raise TimeoutError(f"{self.name} did not come up on port {self.port} within {timeout} s")
            await asyncio.sleep(0.02)

    async def _exchange(
        self, request: bytes, answered: bytes, *, until: tuple[bytes, ...] | None = None
    ) -> bool:
        """Whether the server answers ``request`` with a line starting with ``answered`` (the lines
        before it skipped while they start with ``until``, when given)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            if request:
                writer.write(request)
                await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 1.0)
                if line.startswith(answered):
                    return True
                if until is None or not line or not line.startswith(until):
                    return False
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its connections (a hung server)."""
        if self.running and not self._paused and self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._paused and self._proc is not None:
            self._paused = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)

    async def _end(self, sig: signal.Signals, timeout: float) -> None:
        if sig != signal.SIGKILL:
            self.resume()  # a stopped process would hold SIGTERM until continued
        proc, self._proc = self._proc, None
        self._paused = False
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
        """SIGKILL: a crash, nothing flushed. The data directory is kept."""
        await self._end(signal.SIGKILL, 5.0)

    async def shutdown(self) -> None:
        """SIGTERM: a clean stop. The data directory is kept."""
        await self._end(signal.SIGTERM, 10.0)

    async def restart(self, *, down_for: float = 0.0, crash: bool = True) -> None:
        """Stop (killed, or cleanly with ``crash=False``), wait ``down_for`` seconds, start again on
        the same port and data directory."""
        await (self.kill() if crash else self.shutdown())
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    async def stop(self) -> None:
        """Stop the server and remove its data directory if it made it."""
        await self.shutdown()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
