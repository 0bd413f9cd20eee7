"""Credentials never leak: not in logs (any logger, DEBUG included), reprs, events or exception messages.

Every secret below contains the marker ``5ecr3t``; the checks look for the marker, so a secret that
leaks percent-encoded, cut short or inside a longer value is caught as well as a verbatim one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable

import pytest
from websockets.asyncio.server import ServerConnection

from wsclient import (
    Client,
    ClientConfig,
    ConfigError,
    ConnectFailed,
    Disconnected,
    GaveUpError,
    Heartbeat,
    Reconnect,
)

from .conftest import Recorder, TestServer
from .rawpeer import MakeRaw, RawPeer

MakeServer = Callable[..., Awaitable[TestServer]]

MARKER = "5ecr3t"
BEARER = f"tok-{MARKER}-bearer"
COOKIE = f"session=ck-{MARKER}; theme=dark"
API_KEY = f"key-{MARKER}-api"
QUERY_TOKEN = f"q/{MARKER}+="  # needs percent-encoding in a URL
SIGNATURE = f"sig-{MARKER}"
PASSWORD = f"pw-{MARKER}"
SERVER_COOKIE = f"srv-{MARKER}"
BASIC = base64.b64encode(f"trader:{PASSWORD}".encode()).decode()

HEADERS = {"Authorization": f"Bearer {BEARER}", "Cookie": COOKIE, "X-Api-Key": API_KEY}


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": Heartbeat(interval=5.0, timeout=5.0),
        "reconnect": Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0),
        "open_timeout": 0.5,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


def query(port: int, path: str = "/ws") -> str:
    token = QUERY_TOKEN.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D")
    return f"ws://127.0.0.1:{port}{path}?token={token}&signature={SIGNATURE}&symbol=BTC-USD"


def client_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record but the test server's own, formatted with its traceback, plus its raw arguments
    (a structured-logging handler would serialise those)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [
        f"{formatter.format(record)} {record.args!r}"
        for record in caplog.records
        if not record.name.startswith("websockets.server")
    ]


def assert_no_secret(texts: Iterable[str]) -> None:
    for text in texts:
        assert MARKER not in text, text
        assert BASIC not in text, text


def exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


async def test_header_and_query_credentials_stay_out_of_logs_reprs_and_events(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    requests: list[tuple[str, dict[str, str]]] = []

    async def close_1011(server: TestServer, ws: ServerConnection) -> None:
        assert ws.request is not None
        requests.append((ws.request.path, dict(ws.request.headers.raw_items())))
        await ws.recv()  # the replayed subscription: the client is OPEN
        await ws.send("hello")
        await ws.close(1011, "try again")

    server = await make_server(close_1011)
    caplog.set_level(logging.DEBUG)
    client = Client(query(server.port), headers=HEADERS, config=config())
    client.subscribe({"op": "subscribe", "channel": "trades"})
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 2)
        await client.send({"op": "note"})
        texts = [repr(client), str(client), client.url, repr(client.stats), repr(client.subscriptions)]
    texts += [repr(client), *map(repr, recorder.events), *map(str, recorder.events)]
    logs = client_logs(caplog)

    # The credentials did go over the wire: the checks below are not vacuous.
    path, headers = requests[0]
    assert headers["Authorization"] == f"Bearer {BEARER}" and headers["X-Api-Key"] == API_KEY
    assert headers["Cookie"] == COOKIE and f"signature={SIGNATURE}" in path
    # And the transport's DEBUG log of the handshake was captured, masked.
    for line in ("> GET /ws?token=***&signature=***&symbol=", "> Authorization: ***", "> Cookie: ***"):
        assert any(line in entry for entry in logs), line
    assert any("> X-Api-Key: ***" in entry for entry in logs)
    assert "symbol=BTC-USD" in client.url and "token=***" in client.url
    assert_no_secret(logs + texts)


async def test_userinfo_and_query_credentials_stay_out_of_a_401_failure(
    raw_server: MakeRaw, caplog: pytest.LogCaptureFixture
) -> None:
    """GaveUpError after a 401, its cause and traceback, the events and logs: no password, no token,
    no Basic credentials, and not the session cookie the server set either."""

    async def unauthorized(peer: RawPeer) -> None:
        await peer.read_request()
        peer.send(
            b"HTTP/1.1 401 Unauthorized\r\nSet-Cookie: session=" + SERVER_COOKIE.encode() + b"\r\n"
            b"WWW-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
        )
        await peer.reader.read()

    server = await raw_server(unauthorized)
    caplog.set_level(logging.DEBUG)
    url = server.url.replace("ws://", f"ws://trader:{PASSWORD}@") + query(0).partition("/ws")[2]
    client = Client(url, headers={"X-Api-Key": API_KEY}, config=config())
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError) as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    error = info.value
    # The credentials did go over the wire.
    request = server.peers[0].request.decode()
    assert f"Authorization: Basic {BASIC}" in request and f"signature={SIGNATURE}" in request
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed) and failed.status == 401 and not failed.will_retry
    assert len(server.peers) == 1
    texts = exception_texts(error) + exception_texts(error.cause) + [repr(client), client.url]
    texts += [*map(repr, recorder.events), failed.reason]
    logs = client_logs(caplog)
    assert any("< Set-Cookie: ***" in entry for entry in logs), "the response log was captured, masked"
    assert any("> Authorization: ***" in entry for entry in logs), "userinfo became a masked Basic header"
    assert "401" in str(error) and "trader:***@" in client.url
    assert_no_secret(logs + texts)


async def test_connect_failure_reasons_carry_no_credentials(
    raw_server: MakeRaw, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused, timed out, malformed handshake: the reasons, events and logs name no secret."""

    async def wrong_accept(peer: RawPeer) -> None:
        await peer.handshake(accept="d3JvbmcgYWNjZXB0IGtleSE=")
        await peer.reader.read()

    async def silent(peer: RawPeer) -> None:
        await peer.reader.read()

    caplog.set_level(logging.DEBUG)
    refused = await raw_server(silent)
    refused_port = int(refused.url.split(":")[2].split("/")[0])
    await refused.stop()  # nothing listens there any more: connection refused
    servers = [await raw_server(wrong_accept), await raw_server(silent)]
    ports = [refused_port] + [int(s.url.split(":")[2].split("/")[0]) for s in servers]
    texts: list[str] = []
    for port in ports:
        url = query(port).replace("ws://", f"ws://trader:{PASSWORD}@")
        policy = Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0, max_attempts=2)
        client = Client(url, headers=HEADERS, config=config(reconnect=policy, open_timeout=0.3))
        recorder = Recorder(client)
        await client.start()
        with pytest.raises(GaveUpError) as info:
            async with asyncio.timeout(5):
                await client.wait_closed()
        texts += [*exception_texts(info.value), *map(repr, recorder.events), repr(client)]
        reasons = [e.reason for e in recorder.of(ConnectFailed)]  # type: ignore[attr-defined]
        assert len(reasons) == 2, recorder.events
        texts += reasons
    joined = "\n".join(texts)
    assert "connection refused" in joined and "timed out" in joined and "invalid handshake" in joined
    assert_no_secret(texts + client_logs(caplog))


@pytest.mark.parametrize(
    "url",
    [
        f"ws://trader:{PASSWORD}@[::1/ws?token={MARKER}",
        f"ws://trader:{PASSWORD}@127.0.0.1:99999/ws?token={MARKER}",
        f"https://trader:{PASSWORD}@127.0.0.1/ws?token={MARKER}",
        f"ws:///ws?token={MARKER}",
    ],
)
def test_invalid_url_errors_carry_no_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Client(url)
    assert_no_secret(exception_texts(info.value))


async def _reflect_in_accept_header(peer: RawPeer) -> None:
    # A broken server (or middlebox) that puts a request header where the accept key belongs.
    await peer.read_request()
    token = next(
        line.split(":", 1)[1].strip()
        for line in peer.request.decode().split("\r\n")
        if line.lower().startswith("x-api-key:")
    )
    await peer.handshake(accept=token)
    await peer.reader.read()


async def test_a_server_reflecting_a_credential_does_not_leak_it(
    raw_server: MakeRaw, caplog: pytest.LogCaptureFixture
) -> None:
    server = await raw_server(_reflect_in_accept_header)
    caplog.set_level(logging.DEBUG)
    policy = Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0, max_attempts=1)
    client = Client(server.url, headers={"X-Api-Key": API_KEY}, config=config(reconnect=policy))
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError) as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed) and "invalid handshake" in failed.reason
    assert_no_secret([failed.reason, *exception_texts(info.value), *client_logs(caplog)])
