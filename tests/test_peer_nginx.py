"""wsclient behind a real nginx reverse proxy with a short ``proxy_read_timeout``.

nginx closes a proxied WebSocket that carried nothing from the upstream for ``proxy_read_timeout``
(60 s by default), with no close frame. These tests shrink that to 1 s: a client whose heartbeat
pings below it keeps its connection, and a client without one is cut, sees 1006 and comes back with
its subscriptions replayed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsclient import Client, ClientConfig, Connected, Disconnected, Heartbeat, HeartbeatMissed, Reconnect

from .conftest import Collector, Recorder, TestServer
from .peers import free_port, require_binary, stop_process, wait_for_port

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

MakeServer = Callable[..., Awaitable[TestServer]]

READ_TIMEOUT = 1.0
FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)
UPSTREAM_TIMED_OUT = "upstream timed out"

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
# A graceful stop otherwise waits for every proxied WebSocket to end.
worker_shutdown_timeout 1s;

events {{
    worker_connections 64;
}}

http {{
    access_log {dir}/access.log;
    # The packaged defaults point into /var/lib/nginx; keep every file of this instance in its dir.
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout {timeout_ms}ms;
            proxy_send_timeout {timeout_ms}ms;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
async def nginx(tmp_path: Path, server: TestServer) -> AsyncIterator[Nginx]:
    """nginx in front of the echo ``server``, its config, pid and logs all in ``tmp_path``."""
    binary = require_binary("nginx", why="install Debian's nginx package (`make peers` does, as root)")
    process: asyncio.subprocess.Process | None = None
    try:
        # The free port may be taken between our probe and nginx's bind: try a few.
        for _ in range(3):
            port = free_port()
            conf = tmp_path / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    dir=tmp_path, port=port, upstream=server.port, timeout_ms=int(READ_TIMEOUT * 1000)
                )
            )
            with (tmp_path / "nginx.out").open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    binary,
                    "-p",
                    str(tmp_path),
                    "-c",
                    str(conf),
                    "-e",
                    str(tmp_path / "error.log"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            try:
                await wait_for_port(port, process)
            except RuntimeError:
                await stop_process(process)
                process = None
                continue
            break
        if process is None:
            pytest.fail(f"nginx did not start:\n{Nginx(0, tmp_path).error_log()}")
        yield Nginx(port, tmp_path)
    finally:
        if process is not None:
            await stop_process(process, signal.SIGQUIT)


async def test_heartbeat_below_proxy_read_timeout_keeps_the_link(nginx: Nginx, server: TestServer) -> None:
    hb = Heartbeat(interval=0.3, timeout=0.5, server_idle_timeout=READ_TIMEOUT)
    client = Client(nginx.url, config=ClientConfig(heartbeat=hb, reconnect=FAST, open_timeout=3.0))
    recorder = Recorder(client)
    collector = Collector()
    client.on_message(collector)
    async with client:
        await client.wait_open(5)
        # The feed sends nothing: only the heartbeat's round trips keep nginx's read timer from firing.
        # Five of nginx's timeouts (ten of the heartbeat's) pass without a disconnection.
        with pytest.raises(TimeoutError):
            await recorder.wait_for(Disconnected, timeout=5 * READ_TIMEOUT)
        await client.send("still here")
        assert await collector.wait_for(1, timeout=3) == ["still here"]
        stats = client.stats
    assert stats.connects == 1
    assert stats.heartbeat_misses == 0 and not recorder.of(HeartbeatMissed)
    assert stats.last_rtt is not None
    assert server.total == 1
    assert UPSTREAM_TIMED_OUT not in nginx.error_log()


async def test_proxy_read_timeout_cuts_a_silent_link_and_the_client_comes_back(
    nginx: Nginx, server: TestServer
) -> None:
    hb = Heartbeat(mode="off")
    client = Client(nginx.url, config=ClientConfig(heartbeat=hb, reconnect=FAST, open_timeout=3.0))
    client.subscribe({"op": "subscribe", "channel": "trades"})
    recorder = Recorder(client)
    loop = asyncio.get_running_loop()
    async with client:
        await client.wait_open(5)
        opened = loop.time()
        lost = (await recorder.wait_for(Disconnected, timeout=5 * READ_TIMEOUT))[0]
        cut_after = loop.time() - opened
        await recorder.wait_for(Connected, 2, timeout=5)
        await server.wait_until(lambda: len(server.received) >= 2)
    assert isinstance(lost, Disconnected)
    assert lost.code == 1006 and lost.will_retry
    # nginx's timer, not an accident: no earlier than the timeout, and not much later.
    assert 0.9 * READ_TIMEOUT <= cut_after < 4 * READ_TIMEOUT
    sub = '{"op":"subscribe","channel":"trades"}'
    assert server.received[:2] == [sub, sub]
    assert server.total >= 2 and server.peak == 1
    assert UPSTREAM_TIMED_OUT in nginx.error_log()
