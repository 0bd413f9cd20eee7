"""wsclient through real proxies: tinyproxy (HTTP CONNECT), microsocks (SOCKS5), danted (SOCKS4).

Each proxy is a Debian package installed by ``make peers`` and started here on a free 127.0.0.1 port
with its own configuration; a missing one skips the test on a developer's machine and fails it under
CI=true. Every connection test runs on both backends. The proxy comes from ``ClientConfig(proxy=...)``
or from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), as curl reads
it; the rules for choosing it are tested without sockets at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve

from wsclient import (
    Client,
    ClientConfig,
    Connected,
    ConnectFailed,
    ConnectionState,
    Disconnected,
    GaveUp,
    GaveUpError,
    Heartbeat,
    ProxyError,
    Reconnect,
)
from wsclient.testing import FeedServer, HttpConnectProxy
from wsclient.transport.proxy import (
    ProxyURL,
    bypass_proxy,
    open_tunnel,
    proxy_from_environment,
    resolve_proxy,
)

from .conftest import Collector, Recorder
from .peers import free_port, require_binary, stop_process, wait_for_port

on_both_backends = pytest.mark.usefixtures("backend")

FAST = Reconnect(initial_delay=0.02, max_delay=0.1, jitter=0, reset_after=0.2)
SUBSCRIBE = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
MARKER = "5ecr3t"
PASSWORD = f"pw-{MARKER}"
USER = "alice"
WHY = "install it with `make peers` (Debian's tinyproxy, microsocks and dante-server packages, as root)"


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": Heartbeat(interval=1.0, timeout=1.0),
        "reconnect": FAST,
        "open_timeout": 3.0,
        "close_timeout": 0.5,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


# -- the proxies ----------------------------------------------------------------------------------------


@dataclass
class ProxyPeer:
    """A proxy binary run with its own configuration on a free 127.0.0.1 port; restartable there."""

    name: str
    argv: Callable[[int], list[str]]
    directory: Path
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # The free port may be taken between the probe and the proxy's bind: try a few.
        for _ in range(3):
            port = self.port or free_port()
            with (self.directory / f"{self.name}.out").open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    *self.argv(port),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            try:
                await wait_for_port(port, process)
            except RuntimeError:
                await stop_process(process)
                if self.port:
                    break
                continue
            self.port, self.process = port, process
            return
        pytest.fail(f"{self.name} did not start:\n{self.output()}")

    async def kill(self) -> None:
        """SIGKILL: every tunnel drops with the process, as when a proxy crashes."""
        if self.process is not None:
            await stop_process(self.process, signal.SIGKILL)
            self.process = None

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process)
            self.process = None

    def output(self) -> str:
        """What the proxy printed and logged, for a failure's message."""
        paths = [*sorted(self.directory.glob(f"{self.name}*.log")), self.directory / f"{self.name}.out"]
        return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())

    def url(self, scheme: str, auth: tuple[str, str] | None = None) -> str:
        userinfo = f"{auth[0]}:{auth[1]}@" if auth is not None else ""
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}"


MakePeer = Callable[..., Awaitable[ProxyPeer]]


@pytest.fixture
async def peers() -> AsyncIterator[list[ProxyPeer]]:
    started: list[ProxyPeer] = []
    yield started
    for peer in started:
        await peer.stop()


@pytest.fixture
def tinyproxy(tmp_path: Path, peers: list[ProxyPeer]) -> MakePeer:
    """``await tinyproxy(auth=(user, password), connect_ports=(443,))``: a started tinyproxy."""
    binary = require_binary("tinyproxy", why=WHY)

    async def make(auth: tuple[str, str] | None = None, connect_ports: Iterable[int] = ()) -> ProxyPeer:
        directory = tmp_path / f"tinyproxy{len(peers)}"
        directory.mkdir()

        def argv(port: int) -> list[str]:
            lines = [
                f"Port {port}",
                "Listen 127.0.0.1",
                "Timeout 60",
                "Allow 127.0.0.1",
                "LogLevel Info",
                f'LogFile "{directory}/tinyproxy.log"',
                "MaxClients 32",
            ]
            if auth is not None:
                lines.append(f"BasicAuth {auth[0]} {auth[1]}")
            # Without ConnectPort lines tinyproxy opens tunnels to any port.
            lines += [f"ConnectPort {p}" for p in connect_ports]
            (directory / "tinyproxy.conf").write_text("\n".join(lines) + "\n")
            return [binary, "-d", "-c", str(directory / "tinyproxy.conf")]

        peer = ProxyPeer("tinyproxy", argv, directory)
        peers.append(peer)
        await peer.start()
        return peer

    return make


@pytest.fixture
def microsocks(tmp_path: Path, peers: list[ProxyPeer]) -> MakePeer:
    """``await microsocks(auth=(user, password))``: a started microsocks (SOCKS5 only)."""
    binary = require_binary("microsocks", why=WHY)

    async def make(auth: tuple[str, str] | None = None) -> ProxyPeer:
        directory = tmp_path / f"microsocks{len(peers)}"
        directory.mkdir()

        def argv(port: int) -> list[str]:
            credentials = ["-u", auth[0], "-P", auth[1]] if auth is not None else []
            return [binary, "-i", "127.0.0.1", "-p", str(port), *credentials]

        peer = ProxyPeer("microsocks", argv, directory)
        peers.append(peer)
        await peer.start()
        return peer

    return make


DANTED_CONF = """\
logoutput: {dir}/danted.log
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    protocol: tcp
}}
"""


@pytest.fixture
async def danted(tmp_path: Path, peers: list[ProxyPeer]) -> ProxyPeer:
    """A started Dante server (SOCKS4 and SOCKS5 without authentication; no SOCKS4a)."""
    binary = require_binary("danted", why=WHY)
    directory = tmp_path / "danted"
    directory.mkdir()

    def argv(port: int) -> list[str]:
        (directory / "danted.conf").write_text(DANTED_CONF.format(dir=directory, port=port))
        return [binary, "-f", str(directory / "danted.conf"), "-p", str(directory / "danted.pid"), "-N", "1"]

    peer = ProxyPeer("danted", argv, directory)
    peers.append(peer)
    await peer.start()
    return peer


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer(rate=200) as server:
        yield server


async def flows(client: Client, collector: Collector, count: int = 5) -> None:
    """Wait until ``count`` more frames than now have arrived (the feed streams 200 a second)."""
    await collector.wait_for(len(collector.frames) + count, timeout=5)


def make_client(url: str, **overrides: object) -> tuple[Client, Recorder, Collector]:
    client = Client(url, config=config(**overrides))
    client.subscribe(SUBSCRIBE)
    collector = Collector()
    client.on_message(collector)
    return client, Recorder(client), collector


# -- through each proxy, on both backends ----------------------------------------------------------------


@on_both_backends
async def test_http_connect_through_tinyproxy_flows_and_reconnects(
    tinyproxy: MakePeer, feed: FeedServer
) -> None:
    proxy = await tinyproxy()
    client, recorder, collector = make_client(feed.url, proxy=proxy.url("http"))
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
        await feed.restart()  # the server drops the link: reconnect through the proxy
        connected = await recorder.wait_for(Connected, 2)
        await flows(client, collector)
    assert [e.proxy for e in connected] == [proxy.url("http")] * 2  # type: ignore[attr-defined]
    assert connected[1].reconnect  # type: ignore[attr-defined]
    # The proxy saw both tunnels: the traffic went through it, not around it.
    log = (proxy.directory / "tinyproxy.log").read_text()
    assert log.count(f"CONNECT 127.0.0.1:{feed.port}") >= 2, log


@on_both_backends
async def test_http_proxy_with_basic_auth_from_the_environment(
    tinyproxy: MakePeer, feed: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await tinyproxy(auth=(USER, PASSWORD))
    monkeypatch.setenv("http_proxy", proxy.url("http", (USER, PASSWORD)))  # ws:// reads http_proxy
    client, recorder, collector = make_client(feed.url)
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
    (connected,) = recorder.of(Connected)
    assert connected.proxy == f"http://{USER}:***@127.0.0.1:{proxy.port}"  # type: ignore[attr-defined]


@on_both_backends
async def test_wss_through_the_https_proxy_variable_keeps_tls_end_to_end(
    tinyproxy: MakePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    proxy = await tinyproxy()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url("http"))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # for ws:// only: must not be used
    async with serve(echo, "127.0.0.1", 0, ssl=server_context, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"wss://127.0.0.1:{port}/ws", config=config(ssl_context=client_context))
        collector = Collector()
        client.on_message(collector)
        recorder = Recorder(client)
        async with client:
            await client.wait_open(5)
            await client.send("through the tunnel")
            assert await collector.wait_for(1) == ["through the tunnel"]
    assert recorder.of(Connected)[0].proxy == proxy.url("http")  # type: ignore[attr-defined]
    assert f"CONNECT 127.0.0.1:{port}" in (proxy.directory / "tinyproxy.log").read_text()


@on_both_backends
@pytest.mark.parametrize("source", ["config", "ALL_PROXY"])
async def test_socks5_through_microsocks(
    microsocks: MakePeer, feed: FeedServer, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    proxy = await microsocks(auth=(USER, PASSWORD))
    url = proxy.url("socks5h" if source == "ALL_PROXY" else "socks5", (USER, PASSWORD))
    overrides: dict[str, object] = {}
    if source == "config":
        overrides["proxy"] = url
    else:
        monkeypatch.setenv("ALL_PROXY", url)
    client, recorder, collector = make_client(feed.url, **overrides)
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
        await feed.restart()
        await recorder.wait_for(Connected, 2)
        await flows(client, collector)
    assert all(e.proxy is not None and MARKER not in e.proxy for e in recorder.of(Connected))  # type: ignore[attr-defined]


@on_both_backends
async def test_socks5_without_authentication(microsocks: MakePeer, feed: FeedServer) -> None:
    proxy = await microsocks()
    client, _, collector = make_client(feed.url, proxy=proxy.url("socks5h"))
    async with client:
        await client.wait_open(5)
        await flows(client, collector)


@on_both_backends
async def test_socks4_through_dante(danted: ProxyPeer, feed: FeedServer) -> None:
    client, recorder, collector = make_client(feed.url, proxy=danted.url("socks4"))
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
        await feed.restart()
        await recorder.wait_for(Connected, 2)
        await flows(client, collector)
    assert recorder.of(Connected)[0].proxy == danted.url("socks4")  # type: ignore[attr-defined]


# -- the environment: NO_PROXY and proxy=False --------------------------------------------------------


@on_both_backends
@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "localhost,.example.com,127.0.0.1", "*"])
async def test_no_proxy_connects_directly(
    feed: FeedServer, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    # A proxy nobody listens on: going through it would fail.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", no_proxy)
    client, recorder, collector = make_client(feed.url)
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
    assert recorder.of(Connected)[0].proxy is None  # type: ignore[attr-defined]


@on_both_backends
async def test_no_proxy_for_another_port_still_uses_the_proxy(
    tinyproxy: MakePeer, feed: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await tinyproxy()
    monkeypatch.setenv("HTTP_PROXY", proxy.url("http"))
    monkeypatch.setenv("NO_PROXY", f"127.0.0.1:{feed.port + 1},example.com")
    client, recorder, collector = make_client(feed.url)
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
    assert recorder.of(Connected)[0].proxy == proxy.url("http")  # type: ignore[attr-defined]


@on_both_backends
async def test_proxy_false_ignores_the_environment(feed: FeedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("all_proxy", f"socks5://127.0.0.1:{free_port()}")
    client, recorder, collector = make_client(feed.url, proxy=False)
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
    assert recorder.of(Connected)[0].proxy is None  # type: ignore[attr-defined]


# -- refusals ------------------------------------------------------------------------------------------


async def gave_up(client: Client) -> GaveUpError:
    async with client:
        with pytest.raises(GaveUpError) as info:
            await client.wait_closed()
    assert client.state is ConnectionState.FAILED
    return info.value


@on_both_backends
@pytest.mark.parametrize("credentials", [None, (USER, "wrong-" + MARKER)])
async def test_refused_http_proxy_credentials_are_fatal_and_masked(
    tinyproxy: MakePeer,
    feed: FeedServer,
    caplog: pytest.LogCaptureFixture,
    credentials: tuple[str, str] | None,
) -> None:
    caplog.set_level(1)
    proxy = await tinyproxy(auth=(USER, PASSWORD))
    client, recorder, _ = make_client(feed.url, proxy=proxy.url("http", credentials))
    error = await gave_up(client)
    assert error.fatal and error.attempts == 1
    cause = error.cause
    assert isinstance(cause, ProxyError) and cause.fatal
    # tinyproxy answers 407 without credentials and 401 to wrong ones: both mean "not these".
    assert cause.status == (407 if credentials is None else 401)
    assert f"127.0.0.1:{proxy.port}" in str(error)
    assert ("put user:password@" in str(error)) == (credentials is None)
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts += [repr(e) for e in recorder.events] + [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if MARKER in t or PASSWORD in t]
    assert not feed.handshakes  # the server never heard of it


@on_both_backends
@pytest.mark.parametrize("credentials", [None, (USER, "wrong-" + MARKER)])
async def test_refused_socks5_credentials_are_fatal_and_masked(
    microsocks: MakePeer,
    feed: FeedServer,
    caplog: pytest.LogCaptureFixture,
    credentials: tuple[str, str] | None,
) -> None:
    caplog.set_level(1)
    proxy = await microsocks(auth=(USER, PASSWORD))
    client, recorder, _ = make_client(feed.url, proxy=proxy.url("socks5", credentials))
    error = await gave_up(client)
    assert error.fatal and isinstance(error.cause, ProxyError) and error.cause.fatal
    assert "authentication" in str(error)
    texts = [str(error), "".join(traceback.format_exception(error))]
    texts += [repr(e) for e in recorder.events] + [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if MARKER in t]


@on_both_backends
async def test_a_proxy_403_is_retried(tinyproxy: MakePeer, feed: FeedServer) -> None:
    # tinyproxy opens tunnels to port 443 only: CONNECT to the feed's port gets a real 403.
    proxy = await tinyproxy(connect_ports=(443,))
    client, recorder, _ = make_client(feed.url, proxy=proxy.url("http"))
    async with client:
        failures = await recorder.wait_for(ConnectFailed, 3)
        assert client.state is not ConnectionState.FAILED
    assert all(f.will_retry and "HTTP 403" in f.reason for f in failures)  # type: ignore[attr-defined]
    assert not recorder.of(GaveUp)


@on_both_backends
async def test_socks5_unreachable_target_is_retried(microsocks: MakePeer) -> None:
    proxy = await microsocks()
    client, recorder, _ = make_client(f"ws://127.0.0.1:{free_port()}/", proxy=proxy.url("socks5"))
    async with client:
        failures = await recorder.wait_for(ConnectFailed, 2)
    assert all(f.will_retry and "refused the tunnel" in f.reason for f in failures)  # type: ignore[attr-defined]


@on_both_backends
async def test_scripted_proxy_refusals_are_retried_and_retry_after_honoured(feed: FeedServer) -> None:
    async with HttpConnectProxy() as proxy:
        proxy.refuse(403)
        proxy.refuse(502)
        proxy.refuse(503, {"Retry-After": "1"})
        client, recorder, collector = make_client(feed.url, proxy=proxy.url)
        async with client:
            await client.wait_open(5)
            await flows(client, collector)
        failures = recorder.of(ConnectFailed)
        assert [f.will_retry for f in failures] == [True] * 3  # type: ignore[attr-defined]
        assert [r.status for r in proxy.requests] == [403, 502, 503, 200]
        assert failures[2].retry_after == 1.0  # type: ignore[attr-defined]
        assert failures[2].delay >= 1.0  # type: ignore[attr-defined]


# -- a proxy that dies, a proxy that never answers ------------------------------------------------------


@on_both_backends
@pytest.mark.parametrize("kind", ["http", "socks5"])
async def test_a_proxy_killed_mid_stream_is_a_dead_link_and_the_client_comes_back(
    tinyproxy: MakePeer, microsocks: MakePeer, feed: FeedServer, kind: str
) -> None:
    proxy = await (tinyproxy() if kind == "http" else microsocks())
    client, recorder, collector = make_client(feed.url, proxy=proxy.url(kind))
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
        await proxy.kill()
        await recorder.wait_for(Disconnected)
        # While the proxy is down, attempts fail on the proxy, retried, and say so.
        failures = await recorder.wait_for(ConnectFailed, 2)
        assert all(f.will_retry and "cannot reach proxy" in f.reason for f in failures)  # type: ignore[attr-defined]
        await proxy.start()  # same port
        await recorder.wait_for(Connected, 2)
        await flows(client, collector)
    assert client.stats.connects == 2


async def silent_server() -> tuple[asyncio.Server, list[asyncio.Future[bytes]]]:
    """Accepts and never answers; each connection's future is what it read until the client left."""
    ended: list[asyncio.Future[bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        ended.append(done)
        data = b""
        try:
            while chunk := await reader.read(4096):
                data += chunk
        except OSError:
            pass
        done.set_result(data)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), ended


@on_both_backends
@pytest.mark.parametrize("scheme", ["http", "socks5", "socks4"])
async def test_a_proxy_that_never_answers_is_bounded_by_open_timeout(feed: FeedServer, scheme: str) -> None:
    server, ended = await silent_server()
    try:
        port = server.sockets[0].getsockname()[1]
        client, recorder, _ = make_client(
            feed.url,
            proxy=f"{scheme}://127.0.0.1:{port}",
            open_timeout=0.3,
            reconnect=Reconnect(initial_delay=0.01, max_delay=0.01, max_attempts=1),
        )
        started = time.monotonic()
        error = await gave_up(client)
        elapsed = time.monotonic() - started
        assert isinstance(error.cause, TimeoutError)
        assert f"through proxy {scheme}://127.0.0.1:{port}" in str(error)
        assert elapsed < 3.0  # 0.3 s and the teardown, never an unbounded wait
        # The client sent the proxy's greeting, then hung up: no socket left behind.
        (first,) = ended
        sent = await asyncio.wait_for(first, 3)
        assert sent.startswith(
            b"CONNECT 127.0.0.1:" if scheme == "http" else b"\x05" if scheme == "socks5" else b"\x04"
        )
        assert not feed.handshakes
        (failure,) = recorder.of(ConnectFailed)
        assert failure.reason.startswith("timed out")  # type: ignore[attr-defined]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("scheme", "sent"),
    [
        # SOCKS4a: the name goes to the proxy (after the user id and its NUL), the address is 0.0.0.1.
        ("socks4a", b"\x04\x01" + (8765).to_bytes(2, "big") + bytes([0, 0, 0, 1]) + b"bob\x00localhost\x00"),
        # SOCKS4: the name is resolved here, the proxy gets the address.
        ("socks4", b"\x04\x01" + (8765).to_bytes(2, "big") + bytes([127, 0, 0, 1]) + b"bob\x00"),
    ],
)
async def test_socks4a_lets_the_proxy_resolve_the_name(scheme: str, sent: bytes) -> None:
    # Dante has no SOCKS4a: what the client sends is checked on a server that only listens.
    server, ended = await silent_server()
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await open_tunnel(f"{scheme}://bob@127.0.0.1:{port}", "ws://localhost:8765/ws")
        (first,) = ended
        assert await asyncio.wait_for(first, 3) == sent
    finally:
        server.close()
        await server.wait_closed()


# -- secrets ------------------------------------------------------------------------------------------


@on_both_backends
@pytest.mark.parametrize("source", ["config", "HTTP_PROXY"])
async def test_proxy_credentials_never_leak(
    tinyproxy: MakePeer,
    feed: FeedServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    caplog.set_level(1)
    proxy = await tinyproxy(auth=(USER, PASSWORD))
    url = proxy.url("http", (USER, PASSWORD))
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    if source == "config":
        client, recorder, collector = make_client(feed.url, proxy=url)
        texts = [repr(client._config), str(client._config)]
    else:
        monkeypatch.setenv("HTTP_PROXY", url)
        client, recorder, collector = make_client(feed.url)
        texts = []
    async with client:
        await client.wait_open(5)
        await flows(client, collector)
        texts.append(repr(client))
        await feed.restart()
        await recorder.wait_for(Connected, 2)
    texts += [repr(e) for e in recorder.events]
    texts += [f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records]
    assert any("through proxy" in t for t in texts)  # the logs say it, masked
    assert not [t for t in texts if MARKER in t or basic in t]


def test_config_repr_and_errors_mask_the_proxy_password() -> None:
    config = ClientConfig(proxy=f"socks5h://{USER}:{PASSWORD}@proxy.example:1080")
    assert MARKER not in repr(config) and MARKER not in str(config)
    assert f"socks5h://{USER}:***@proxy.example:1080" in repr(config)
    with pytest.raises(ValueError, match="proxy") as info:
        ClientConfig(proxy=f"https://{USER}:{PASSWORD}@proxy.example:443")
    assert MARKER not in str(info.value)


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("https://proxy.example:443", "use the proxy's plain http:// port"),
        ("ftp://proxy.example:21", "use one of http, socks5, socks5h, socks4, socks4a"),
        ("http://proxy.example", "has no port: write it, e.g. http://proxy.example:3128"),
        ("socks5://:1080", "has no host"),
        ("http://proxy.example:99999", "not a valid proxy URL"),
        ("http://proxy.example:3128/path", "a proxy URL is only scheme://"),
        ("socks4://user:pw@proxy.example:1080", "SOCKS4 cannot send"),
        ("", "None (the default: from the environment"),
        (True, "or False (never a proxy)"),
    ],
)
def test_bad_proxy_config_names_the_field_and_the_fix(value: object, fix: str) -> None:
    with pytest.raises(ValueError, match="proxy") as info:
        ClientConfig(proxy=value)  # type: ignore[arg-type]
    assert fix in str(info.value)


@on_both_backends
async def test_a_bad_proxy_variable_is_a_fatal_error_naming_it(
    feed: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # not for ws://
    monkeypatch.setenv("HTTP_PROXY", "ftp://proxy.example:21")
    client, _, _ = make_client(feed.url)
    error = await gave_up(client)
    assert error.fatal and "HTTP_PROXY (ftp://proxy.example:21) has scheme 'ftp'" in str(error)


# -- the rules, without sockets ---------------------------------------------------------------------------


WS, WSS = "ws://venue.example/ws", "wss://venue.example/ws"


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        (WSS, {"HTTPS_PROXY": "http://p:1"}, ("http://p:1", "HTTPS_PROXY")),
        (WSS, {"HTTP_PROXY": "http://p:1"}, None),
        (WS, {"HTTP_PROXY": "http://p:1"}, ("http://p:1", "HTTP_PROXY")),
        (WS, {"HTTPS_PROXY": "http://p:1"}, None),
        # Lower case wins, as in curl.
        (
            WS,
            {"HTTP_PROXY": "http://up:1", "http_proxy": "http://low:1"},
            ("http://low:1", "http_proxy"),
        ),
        # ALL_PROXY after the scheme's own variable.
        (WSS, {"ALL_PROXY": "socks5h://s:1"}, ("socks5h://s:1", "ALL_PROXY")),
        (
            WSS,
            {"all_proxy": "socks5h://s:1", "https_proxy": "http://p:1"},
            ("http://p:1", "https_proxy"),
        ),
        # No scheme: an HTTP proxy; an empty value is no value.
        (WS, {"http_proxy": "p.corp:8080"}, ("http://p.corp:8080", "http_proxy")),
        (
            WS,
            {"http_proxy": "", "HTTP_PROXY": "http://p:1"},
            ("http://p:1", "HTTP_PROXY"),
        ),
        # httpoxy: HTTP_PROXY in a CGI script may come from a request's "Proxy:" header.
        (WS, {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}, None),
        (WS, {"NO_PROXY": "*", "ALL_PROXY": "http://p:1"}, None),
    ],
)
def test_proxy_from_the_environment(url: str, env: dict[str, str], expected: tuple[str, str] | None) -> None:
    assert proxy_from_environment(url, env) == expected


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("venue.example", 443, "venue.example", True),
        ("ws.venue.example", 443, "venue.example", True),
        ("ws.venue.example", 443, ".venue.example", True),
        ("venue.example", 443, ".venue.example", True),
        ("othervenue.example", 443, "venue.example", False),
        ("VENUE.example.", 443, "venue.EXAMPLE", True),
        ("venue.example", 443, "venue.example:443", True),
        ("venue.example", 9443, "venue.example:443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("::1", 443, "::1", True),
        ("::1", 443, "[::1]:443", True),
        ("::1", 443, "[::1]:80", False),
        ("fd00::5", 443, "fd00::/8", True),
        ("venue.example", 443, " a.example , venue.example ", True),
        ("venue.example", 443, "a.example b.example", False),
        ("venue.example", 443, "*", True),
        ("venue.example", 443, "", False),
        ("127.0.0.1", 443, "localhost", False),  # names match names, addresses addresses
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, port, no_proxy) is bypass


def test_resolve_proxy_settings() -> None:
    env = {"HTTP_PROXY": "http://env:3128"}
    assert resolve_proxy(False, "ws://v.example/", env) is None
    chosen = resolve_proxy("socks5h://u:p@cfg:1080", "ws://v.example/", env)
    assert chosen is not None and chosen[0].host == "cfg" and chosen[1] == "proxy"
    chosen = resolve_proxy(None, "ws://v.example/", env)
    assert chosen is not None and chosen[0].url == "http://env:3128" and chosen[1] == "HTTP_PROXY"
    # An explicit proxy is used even for a host NO_PROXY lists (NO_PROXY is about the environment's).
    env["NO_PROXY"] = "v.example"
    assert resolve_proxy("http://cfg:3128", "ws://v.example/", env) is not None
    assert resolve_proxy(None, "ws://v.example/", env) is None
    # curl's default port for a proxy variable without one.
    assert ProxyURL.parse("http://env", source="HTTP_PROXY", default_port=1080).port == 1080


def test_the_suite_runs_without_proxy_variables() -> None:
    # tests/conftest.py clears them for every test: a developer's proxy must not route 127.0.0.1.
    assert not {k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
