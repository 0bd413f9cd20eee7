"""Helpers for the tests that run wsclient against real peers: nginx, a Node `ws` server, TLS.

The peers are installed by ``make peers`` (``tests/peers/install.sh``). A test needing one that is
absent skips on a developer's machine, but fails under ``CI=true``: there a skip would hide a broken
install step behind a green run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = [
    "PEERS_DIR",
    "find_binary",
    "free_port",
    "missing",
    "require_binary",
    "stop_process",
    "wait_for_port",
]

PEERS_DIR = Path(__file__).resolve().parent

# Debian puts nginx in /usr/sbin, which is not on a non-root user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


def find_binary(name: str) -> str | None:
    """The path of executable ``name`` on PATH or in the usual system directories, else None."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _EXTRA_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str, *, why: str) -> str:
    """Return the path of binary ``name``; without it, skip the test (fail under CI=true)."""
    path = find_binary(name)
    if path is None:
        missing(f"{name} is not installed", why)
    return path


def missing(what: str, why: str) -> NoReturn:
    """Skip the test because a peer is missing, or fail it under CI=true, where that is a bug."""
    message = f"{what}: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: `make peers` should have installed it, so this is not skipped)")
    pytest.skip(message)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on a moment ago (bind, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for_port(port: int, process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port``; fail early if ``process`` exited.

    A listening socket announces itself to nobody, so this polls; each try is one local connect.
    """
    async with asyncio.timeout(timeout):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the peer exited with status {process.returncode} before listening")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


async def stop_process(
    process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, grace: float = 3.0
) -> None:
    """Ask ``process`` to stop with ``sig``, then kill its whole process group after ``grace`` seconds.

    The peers are started with ``start_new_session=True``, so their group is theirs alone and takes
    nginx's workers along with the master.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
