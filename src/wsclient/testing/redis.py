"""A real ``redis-server``, started and stopped by tests on a free loopback port.

The binary comes from the ``PATH`` or the usual system directories (Debian's ``redis-server``
package puts it in ``/usr/bin``). The server runs with an append-only file fsynced before every
reply (``--appendonly yes --appendfsync always``) and no snapshots, in a temporary directory kept
across :meth:`RedisServer.restart` and :meth:`RedisServer.kill`: what it acknowledged survives a
crash, as it would in production with those settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["RedisServer", "find_redis_server"]

_SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin")


def find_redis_server() -> str | None:
    """The path of a ``redis-server`` binary, or ``None``."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    for directory in _SYSTEM_DIRS:
        candidate = os.path.join(directory, "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """``async with RedisServer() as server:`` → ``server.url`` is ``redis://127.0.0.1:<port>/0``.

    Args:
        port: 0 picks a free port, kept across restarts.
        data_dir: Where the append-only file lives; a temporary directory (removed on :meth:`stop`)
            by default.
        binary: The ``redis-server`` to run; found with :func:`find_redis_server` by default.
        args: More ``--option value`` arguments for the server.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: str | None = None,
        binary: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError(
                "redis-server not found: apt-get install redis-server (or `make peers` as root)"
            )
        self.binary = found
        self.port = port or _free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="wsclient-redis-")
        self.args = args
        self._proc: asyncio.subprocess.Process | None = None
        self._paused = False
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        return Path(self.data_dir) / "redis.log"

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers ``PING`` (its append-only file loaded)."""
        if self.running:
            return
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self.data_dir,
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            *self.args,
        ]
        self._proc = await asyncio.create_subprocess_exec(
            *args,
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
                    f"redis-server exited with {self._proc.returncode} on start: {self._log_tail()}"
                )
            if await self._ready():
                return
            if loop.time() > deadline:
                await self.kill()
                raise TimeoutError(f"redis-server did not come up on port {self.port} within {timeout} s")
            await asyncio.sleep(0.02)

    async def _ready(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        try:
            # -LOADING while the append-only file is replayed; +PONG once it serves.
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

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
        """SIGKILL: a crash. The data directory is kept."""
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
