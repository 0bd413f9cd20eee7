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
    Connected,
    ConnectFailed,
    Disconnected,
    GaveUp,
    GaveUpError,
    HandshakeRejected,
    Heartbeat,
    Reconnect,
)

from .conftest import Recorder, TestServer
from .rawpeer import MakeRaw, RawPeer

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

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


# Everything the transports log, picows' level-9 dumps of raw bytes included.
ALL_LEVELS = 1

# How each backend logs the upgrade request it sends (websockets at DEBUG, line by line; picows below
# DEBUG, as the repr of the raw bytes).
HANDSHAKE_LOG_LINES = {
    "websockets": (
        "> GET /ws?token=***&signature=***&symbol=",
        "> Authorization: ***",
        "> Cookie: ***",
        "> X-Api-Key: ***",
    ),
    "picows": (
        "Send upgrade request: b'GET /ws?token=***&signature=***&symbol=",
        "\\r\\nAuthorization: ***\\r\\n",
        "\\r\\nCookie: ***\\r\\n",
        "\\r\\nX-Api-Key: ***\\r\\n",
    ),
}


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
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    requests: list[tuple[str, dict[str, str]]] = []

    async def close_1011(server: TestServer, ws: ServerConnection) -> None:
        assert ws.request is not None
        requests.append((ws.request.path, dict(ws.request.headers.raw_items())))
        await ws.recv()  # the replayed subscription: the client is OPEN
        await ws.send("hello")
        await ws.close(1011, "try again")

    server = await make_server(close_1011)
    caplog.set_level(ALL_LEVELS)
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
    # And the transport's log of the handshake request was captured, masked.
    for line in HANDSHAKE_LOG_LINES[backend]:
        assert any(line in entry for entry in logs), line
    assert "symbol=BTC-USD" in client.url and "token=***" in client.url
    assert_no_secret(logs + texts)


async def test_userinfo_and_query_credentials_stay_out_of_a_401_failure(
    raw_server: MakeRaw, caplog: pytest.LogCaptureFixture, backend: str
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
    caplog.set_level(ALL_LEVELS)
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
    cause = error.cause
    assert isinstance(cause, HandshakeRejected)
    texts = exception_texts(error) + exception_texts(cause) + [repr(client), client.url]
    texts += [*map(repr, recorder.events), failed.reason, repr(cause.headers), repr(cause.body)]
    assert cause.headers["set-cookie"] == "***", "the rejection keeps its headers, masked"
    logs = client_logs(caplog)
    # picows does not log a rejected upgrade's response; websockets does, line by line.
    response, request_line = {
        "websockets": ("< Set-Cookie: ***", "> Authorization: ***"),
        "picows": (None, "\\r\\nAuthorization: ***\\r\\n"),
    }[backend]
    assert response is None or any(response in entry for entry in logs), "the response log, masked"
    assert any(request_line in entry for entry in logs), "userinfo became a masked Basic header"
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

    caplog.set_level(ALL_LEVELS)
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
    caplog.set_level(ALL_LEVELS)
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


# -- redirects ---------------------------------------------------------------------------------------

MBX_KEY = f"mbx-{MARKER}-key"
ALL_CREDENTIALS = {**HEADERS, "X-MBX-APIKEY": MBX_KEY}


def redirect_to(location: str, status: int = 307) -> Callable[[RawPeer], Awaitable[None]]:
    """A server that answers every upgrade request with a redirect to ``location``."""

    async def script(peer: RawPeer) -> None:
        await peer.read_request()
        reason = {301: "Moved Permanently", 302: "Found", 307: "Temporary Redirect"}[status]
        peer.send(f"HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
        await peer.reader.read()

    return script


def recording(requests: list[tuple[str, dict[str, str]]]) -> Callable[..., Awaitable[None]]:
    async def handler(server: TestServer, ws: ServerConnection) -> None:
        assert ws.request is not None
        requests.append((ws.request.path, {k.lower(): v for k, v in ws.request.headers.raw_items()}))
        async for message in ws:
            await ws.send(message)

    return handler


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_cross_origin_redirect_gets_no_credentials(
    raw_server: MakeRaw, make_server: MakeServer, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """Every credential header the caller gave stays behind when the handshake is redirected to
    another origin (another port here); the new URL's own token is masked in the Connected event."""
    requests: list[tuple[str, dict[str, str]]] = []
    target = await make_server(recording(requests))
    location = f"ws://127.0.0.1:{target.port}/final?token=new-{MARKER}-token"
    redirector = await raw_server(redirect_to(location, status))
    caplog.set_level(ALL_LEVELS)
    client = Client(redirector.url, headers=ALL_CREDENTIALS, config=config())
    recorder = Recorder(client)
    async with client:
        [connected] = await recorder.wait_for(Connected)
    # The redirector did get them: the check below is not vacuous.
    sent = redirector.peers[0].request.decode()
    assert f"X-MBX-APIKEY: {MBX_KEY}" in sent and f"Bearer {BEARER}" in sent
    [(path, headers)] = requests
    assert path.startswith("/final?token=")
    for name in ("authorization", "cookie", "x-api-key", "x-mbx-apikey"):
        assert name not in headers, name
    assert isinstance(connected, Connected)
    assert connected.url == f"ws://127.0.0.1:{target.port}/final?token=***"
    assert any("credential headers not sent to the new origin" in r.getMessage() for r in caplog.records)
    assert_no_secret([repr(connected), *client_logs(caplog)])


async def test_a_same_origin_redirect_keeps_the_credentials(raw_server: MakeRaw) -> None:
    async def moved(peer: RawPeer) -> None:
        request = await peer.read_request()
        if request.startswith(b"GET /ws "):
            peer.send(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /v2/ws\r\nContent-Length: 0\r\n\r\n")
            await peer.reader.read()
            return
        await peer.handshake()
        await peer.serve()

    server = await raw_server(moved)
    client = Client(server.url, headers=ALL_CREDENTIALS, config=config())
    recorder = Recorder(client)
    async with client:
        [connected] = await recorder.wait_for(Connected)
    final = server.peers[1].request.decode()
    assert final.startswith("GET /v2/ws ")
    assert f"X-MBX-APIKEY: {MBX_KEY}" in final and f"Authorization: Bearer {BEARER}" in final
    assert isinstance(connected, Connected) and connected.url.endswith("/v2/ws")


async def test_redirect_hops_are_bounded_the_same_on_both_backends(raw_server: MakeRaw) -> None:
    hops: list[bytes] = []

    async def loop(peer: RawPeer) -> None:
        hops.append(await peer.read_request())
        peer.send(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")
        await peer.reader.read()

    server = await raw_server(loop)
    policy = Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0, max_attempts=1)
    client = Client(server.url, config=config(reconnect=policy, max_redirects=3))
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError):
        async with asyncio.timeout(5):
            await client.wait_closed()
    assert len(hops) == 4  # the request, then three redirects followed
    [failed] = recorder.of(ConnectFailed)
    assert isinstance(failed, ConnectFailed) and "too many redirects" in failed.reason


# -- what the server says back -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quote", "shown"),
    [
        (BEARER, "invalid token ***"),
        (BEARER[:12] + "…", "invalid token ***…"),
        (QUERY_TOKEN, "invalid token ***"),
        (f"key {API_KEY}", "invalid token key ***"),
    ],
    ids=["whole-token", "token-cut-short", "query-token", "api-key"],
)
async def test_a_close_reason_quoting_a_secret_is_masked_everywhere(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, quote: str, shown: str
) -> None:
    """1008 "invalid token …": the reason reaches Disconnected, GaveUp, GaveUpError and the logs
    masked, whether the server quotes the token whole or cut short."""

    async def refuse(server: TestServer, ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1008, f"invalid token {quote}")

    server = await make_server(refuse)
    caplog.set_level(ALL_LEVELS)
    client = Client(query(server.port), headers=HEADERS, config=config())
    client.subscribe("sub")
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError) as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    [lost] = recorder.of(Disconnected)
    [gave_up] = recorder.of(GaveUp)
    assert isinstance(lost, Disconnected) and lost.code == 1008
    assert lost.reason.endswith(f"({shown})"), lost.reason
    assert isinstance(gave_up, GaveUp) and gave_up.reason == lost.reason
    texts = [lost.reason, gave_up.reason, *exception_texts(info.value), *map(repr, recorder.events)]
    assert_no_secret(texts + client_logs(caplog))


async def test_a_rejection_body_and_headers_quoting_a_secret_are_masked(raw_server: MakeRaw) -> None:
    async def echo_back(peer: RawPeer) -> None:
        await peer.read_request()
        body = f"bad key {API_KEY} for Bearer {BEARER}".encode()
        peer.send(
            b"HTTP/1.1 403 Forbidden\r\nX-Debug: saw "
            + BEARER.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await peer.reader.read()

    server = await raw_server(echo_back)
    client = Client(server.url, headers=HEADERS, config=config())
    await client.start()
    with pytest.raises(GaveUpError) as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    cause = info.value.cause
    assert isinstance(cause, HandshakeRejected) and cause.status == 403
    assert cause.headers["x-debug"] == "saw ***" and cause.body.startswith(b"bad key ***")
    assert_no_secret([repr(cause.headers), repr(cause.body), *exception_texts(info.value)])


# -- secrets in the URL path, and secrets named by the application ---------------------------------

LISTEN_KEY = f"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv{MARKER}6a81va65sdf1"


async def test_a_token_in_the_url_path_is_masked(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Binance's user-data stream is /ws/<listenKey>: the key is a bearer secret."""

    async def close_quoting(server: TestServer, ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.close(1001, f"listenKey {LISTEN_KEY[:30]} expired")

    server = await make_server(close_quoting)
    caplog.set_level(ALL_LEVELS)
    client = Client(f"ws://127.0.0.1:{server.port}/ws/{LISTEN_KEY}", config=config())
    recorder = Recorder(client)
    async with client:
        [connected] = await recorder.wait_for(Connected)
        [lost] = await recorder.wait_for(Disconnected)
    assert client.url == f"ws://127.0.0.1:{server.port}/ws/***"
    assert isinstance(connected, Connected) and connected.url == client.url
    assert isinstance(lost, Disconnected) and "listenKey *** expired" in lost.reason
    assert_no_secret([repr(client), *map(repr, recorder.events), *client_logs(caplog)])


async def test_secrets_named_by_the_application_are_masked(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    session = f"sess{MARKER}"  # short and in no header: only the application knows it is secret

    async def close_quoting(server: TestServer, ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, f"session {session} crashed")

    server = await make_server(close_quoting)
    caplog.set_level(ALL_LEVELS)
    client = Client(server.url, config=config(), secrets=[session])
    client.subscribe({"op": "login", "session": session})
    recorder = Recorder(client)
    async with client:
        [lost] = await recorder.wait_for(Disconnected)
    assert isinstance(lost, Disconnected) and lost.reason.endswith("(session *** crashed)")
    assert_no_secret([*map(repr, recorder.events), *client_logs(caplog)])
