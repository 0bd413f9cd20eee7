"""wsclient over TLS against a `websockets` server whose certificate comes from a test CA (trustme).

With the default configuration the client trusts only the system's CAs, so the test CA's certificate
must be refused at once, for good and in words a user understands; given an SSL context that trusts the
test CA, the same server works.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from wsclient import (
    Client,
    ClientConfig,
    ConnectFailed,
    ConnectionState,
    GaveUp,
    GaveUpError,
    Heartbeat,
    Reconnect,
    Reconnecting,
    UnsafeRedirect,
)

from .conftest import Collector, Recorder, poll_until

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

# Retries would be quick here: a client that retried a TLS failure would show it within the test.
FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0)
VERIFY_FAILED = "TLS certificate verification failed"


@dataclass
class TlsServer:
    port: int
    ca: trustme.CA
    received: list[str | bytes]

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
async def tls_server() -> AsyncIterator[TlsServer]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    received: list[str | bytes] = []

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, ssl=server_context, ping_interval=None) as server:
        yield TlsServer(server.sockets[0].getsockname()[1], ca, received)


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": Heartbeat(interval=0.1, timeout=1.0),
        "reconnect": FAST,
        "open_timeout": 3.0,
        "close_timeout": 0.5,
    }
    values.update(overrides)
    return ClientConfig(**values)


async def _fail_on_default_trust(server: TlsServer) -> tuple[GaveUpError, Recorder, float]:
    client = Client(server.url, config=config())
    recorder = Recorder(client)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.start()
    try:
        with pytest.raises(GaveUpError) as info:
            async with asyncio.timeout(5):
                await client.wait_closed()
    finally:
        await client.close()
    assert client.state is ConnectionState.FAILED
    return info.value, recorder, loop.time() - started


async def test_untrusted_certificate_is_fatal_at_once(tls_server: TlsServer) -> None:
    error, recorder, elapsed = await _fail_on_default_trust(tls_server)
    assert error.fatal
    assert isinstance(error.cause, ssl.SSLCertVerificationError)
    # One attempt, no retry scheduled: a certificate does not become trusted by waiting.
    failed = recorder.of(ConnectFailed)
    assert len(failed) == 1 and isinstance(failed[0], ConnectFailed)
    assert not failed[0].will_retry and failed[0].delay is None
    assert VERIFY_FAILED in failed[0].reason
    assert not recorder.of(Reconnecting)
    (gave_up,) = recorder.of(GaveUp)
    assert isinstance(gave_up, GaveUp) and gave_up.fatal and VERIFY_FAILED in gave_up.reason
    assert elapsed < 3.0
    assert not tls_server.received


async def test_untrusted_certificate_error_says_so(tls_server: TlsServer) -> None:
    error, _, _ = await _fail_on_default_trust(tls_server)
    assert VERIFY_FAILED in str(error)


async def test_untrusted_certificate_counts_one_attempt(tls_server: TlsServer) -> None:
    error, recorder, _ = await _fail_on_default_trust(tls_server)
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed)
    assert (error.attempts, failed.attempt) == (1, 1)


async def test_ssl_context_trusting_the_ca_connects(tls_server: TlsServer) -> None:
    client = Client(tls_server.url, config=config(ssl_context=tls_server.client_context()))
    collector = Collector()
    client.on_message(collector)
    async with client:
        await client.wait_open(5)
        await client.send({"op": "hello"})
        await client.send(b"\x00\x01")
        frames = await collector.wait_for(2)
        # The heartbeat's pings and pongs cross TLS too.
        await poll_until(lambda: client.stats.last_rtt is not None, timeout=5)
        stats = client.stats
    assert frames == ['{"op":"hello"}', b"\x00\x01"]
    assert tls_server.received == frames
    assert stats.connects == 1 and stats.connect_failures == 0


async def test_a_redirect_from_wss_to_plain_text_is_refused_for_good(tls_server: TlsServer) -> None:
    """A TLS endpoint redirecting the handshake to ws:// would send the credentials in clear text:
    the hop is refused, fatally, and the plain-text server never sees a connection."""
    plain_requests: list[object] = []

    async def plain(ws: ServerConnection) -> None:
        plain_requests.append(ws.request)

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with serve(plain, "127.0.0.1", 0) as plain_server:
        port = plain_server.sockets[0].getsockname()[1]

        def downgrade(connection: ServerConnection, request: Request) -> Response:
            response = connection.respond(302, "")
            response.headers["Location"] = f"ws://127.0.0.1:{port}/plain"
            return response

        async with serve(
            lambda ws: ws.wait_closed(), "127.0.0.1", 0, ssl=context, process_request=downgrade
        ) as tls:
            url = f"wss://127.0.0.1:{tls.sockets[0].getsockname()[1]}/ws"
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
            client = Client(
                url, headers={"Authorization": "Bearer t"}, config=config(ssl_context=client_context)
            )
            recorder = Recorder(client)
            await client.start()
            with pytest.raises(GaveUpError) as info:
                async with asyncio.timeout(5):
                    await client.wait_closed()
    assert isinstance(info.value.cause, UnsafeRedirect) and info.value.fatal
    [failed] = recorder.of(ConnectFailed)
    assert isinstance(failed, ConnectFailed) and "plain-text" in failed.reason and not failed.will_retry
    assert plain_requests == []
