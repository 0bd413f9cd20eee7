"""A real ``redis-server``, started and stopped by tests on a free loopback port.

The binary comes from the ``PATH`` or the usual system directories (Debian's ``redis-server``
package puts it in ``/usr/bin``). The server runs with an append-only file fsynced before every
reply (``--appendonly yes --appendfsync always``) and no snapshots, in a temporary directory kept
across :meth:`RedisServer.restart` and :meth:`RedisServer.kill`: what it acknowledged survives a
crash, as it would in production with those settings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .process import ServerProcess

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


class RedisServer(ServerProcess):
    """``async with RedisServer() as server:`` → ``server.url`` is ``redis://127.0.0.1:<port>/0``.

    Args:
        port: 0 picks a free port, kept across restarts.
        data_dir: Where the append-only file lives; a temporary directory (removed on :meth:`stop`)
            by default.
        binary: The ``redis-server`` to run; found with :func:`find_redis_server` by default.
        args: More ``--option value`` arguments for the server.
    """

    name = "redis-server"

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
        super().__init__(found, port, data_dir)
        self.args = args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return Path(self.data_dir) / "redis.log"

    def _command(self) -> list[str]:
        return [
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

    async def _ready(self) -> bool:
        # -LOADING while the append-only file is replayed; +PONG once it serves.
        return await self._exchange(b"PING\r\n", b"+PONG")

    def _exit_detail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ": (no log)"
        return ": " + " | ".join(text.strip().splitlines()[-5:])
